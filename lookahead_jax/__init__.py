"""lookahead_jax: pure, compiled JAX functions for lookahead methods."""

__version__ = "0.1.0"
