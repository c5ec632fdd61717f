"""Benchmarks behind `lookahead-jax bench NAME` and the experiment scripts."""
