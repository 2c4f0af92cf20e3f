"""semantica_jax: image-conditioned diffusion (Semantica) in JAX/Flax."""
