"""Generation loops and lookahead decoding strategies."""

from lookahead_jax.decoding.generate import Generation, GenerationStats, generate

__all__ = ["Generation", "GenerationStats", "generate"]
