"""Command-line tools on a trained workdir: `python -m semantica_jax.tools.<name>`."""
