"""Config of experiments/compare_pyhgf.py: lookahead_jax's HGF against pyhgf 0.3.2."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # pyhgf runs in its own Python 3.12 virtual environment (it needs jax < 0.7);
    # created with `python312 -m venv` + `pip install pyhgf==0.3.2` if missing.
    config.pyhgf = True
    config.pyhgf_venv = "/work/pyhgf-venv"
    config.python312 = "/root/.pyenv/versions/3.12.1/bin/python"
    config.pyhgf_version = "0.3.2"
    # Speed of one series (3-level continuous HGF on the tiled USD-CHF series, float32):
    # first call (compile + run) and the median of `repeats` steady-state calls,
    # each call made the way a user makes it (per-call overhead included).
    config.lengths = (1_000, 10_000, 100_000)
    config.repeats = 5
    config.variants = ("unbounded", "standard")  # pyhgf's default and the classic HGF
    # Batch: jit(vmap) over subjects; gradient of the input surprise w.r.t. the three
    # tonic volatilities, for one series and vmapped over the subjects.
    config.num_subjects = 1_000
    config.subject_steps = 1_000
    # NaN rate: random tonic volatilities of the 3-level HGF on the twice-tiled series
    # (the jump from 0.82 back to 1.04 is what breaks the classic HGF).
    config.nan_draws = 1_000
    config.nan_omega_low = (-12.0, -8.0, -8.0)
    config.nan_omega_high = (-2.0, -1.0, -1.0)
    config.seed = 0
    config.output_dir = "outputs/compare_pyhgf"
    return config
