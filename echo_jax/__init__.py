"""echo_jax: ECHO (one-step block diffusion for chest X-ray reports) in JAX/Flax NNX."""

__version__ = "0.1.0"

__all__ = ["load_pretrained"]


def __getattr__(name: str):
  # Lazy, so `import echo_jax` stays cheap (no jax/flax import until a model is needed).
  if name == "load_pretrained":
    from echo_jax.models.hf_import import load_pretrained

    return load_pretrained
  raise AttributeError(f"module 'echo_jax' has no attribute {name!r}")
