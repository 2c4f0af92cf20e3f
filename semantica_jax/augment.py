"""`python -m semantica_jax.augment`: the generative-augmentation tool (tools/augment.py)."""

from semantica_jax.tools.augment import run

if __name__ == "__main__":
    run()
