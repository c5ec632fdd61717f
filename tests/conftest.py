"""Test setup: 8 simulated CPU devices so every sharding path runs, set before JAX loads."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"
