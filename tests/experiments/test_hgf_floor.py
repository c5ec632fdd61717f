"""experiments/hgf_floor.py: the C loop computes our HGF's step, value for value."""

import shutil

import pytest

from experiments.benchmarks import hgf_floor


@pytest.mark.slow  # a benchmark's own check: the slow tier
@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_the_c_loop_computes_our_step(tmp_path):
    exe = hgf_floor.build("cc", "-O2", tmp_path)
    # 700 steps: the classic HGF's precisions underflow at step 614 (NaN from there on,
    # on both sides), so finite values and the NaN rule are both compared.
    check = hgf_floor.check(exe, hgf_floor.ours(), length=700)
    assert check["finite_steps"] == 614
    assert check["same_nan"]
    assert check["max_relative_difference"] < 1e-5


def test_no_compiler_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="`cc`"):
        hgf_floor.build("no-such-compiler-here", "-O2", tmp_path)
