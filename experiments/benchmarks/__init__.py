"""Benchmarks behind the experiment scripts (a source checkout only, not the wheel)."""
