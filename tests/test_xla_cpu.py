"""The XLA:CPU small-loop option lookahead_jax sets at import (lookahead_jax._xla_cpu)."""

import os
import subprocess
import sys

import pytest

from lookahead_jax import _xla_cpu

OPTION = f"{_xla_cpu.OPTION}={_xla_cpu.THRESHOLD_BYTES}"


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("", f"--xla_backend_extra_options={OPTION}"),
        ("--xla_force_host_platform_device_count=8",
         f"--xla_force_host_platform_device_count=8 --xla_backend_extra_options={OPTION}"),
        # An existing extra-options flag is merged into, not followed by a second one
        # (XLA keeps only the last).
        ("--xla_backend_extra_options=foo=1 --x=2",
         f"--xla_backend_extra_options=foo=1,{OPTION} --x=2"),
        # A threshold the user chose is kept.
        (f"--xla_backend_extra_options={_xla_cpu.OPTION}=1",
         f"--xla_backend_extra_options={_xla_cpu.OPTION}=1"),
    ],
)  # fmt: skip
def test_flags_merge(flags, expected):
    assert _xla_cpu.with_small_loop_threshold(flags) == expected


def _flags_after_import(env_update):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", _xla_cpu.OPT_OUT)}
    env.update(env_update)
    code = "import os, lookahead_jax; print(os.environ.get('XLA_FLAGS', ''))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_import_sets_the_option_unless_opted_out_or_too_late():
    assert _flags_after_import({}) == f"--xla_backend_extra_options={OPTION}"
    assert _flags_after_import({_xla_cpu.OPT_OUT: "1"}) == ""
    # After JAX created its backend the option could not take effect: left alone.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", _xla_cpu.OPT_OUT)}
    code = (
        "import os, jax; jax.numpy.zeros(1).block_until_ready(); import lookahead_jax; "
        "print(os.environ.get('XLA_FLAGS', ''), lookahead_jax.small_loop_kernels())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "None"


def test_the_option_is_in_force_in_the_tests():
    # conftest imports lookahead_jax._xla_cpu before JAX creates its backend.
    assert _xla_cpu.small_loop_kernels() == _xla_cpu.THRESHOLD_BYTES
