"""echo_jax: ECHO (one-step block diffusion for chest X-ray reports) in JAX/Flax NNX."""

__version__ = "0.1.0"
