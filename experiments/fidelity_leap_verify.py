"""Leap+Verify fidelity (issue 19): the paper's protocol over model sizes x learning rates,
acceptance by regime and K with Wilson intervals, trajectory straightness, and the online
wrapper at the best setting.

Usage::

    python experiments/fidelity_leap_verify.py --config=configs/fidelity_leap_verify.py \\
        [--config.quick=True] [--config.seeds='(0, 1)'] [--config.output_dir=...]

Writes ``results.json`` and ``fidelity.png`` to ``config.output_dir`` and prints the tables.
See ``experiments/benchmarks/fidelity_leap_verify.py`` for what each figure means.
"""

import pathlib
import sys

from absl import logging
from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, fidelity_leap_verify  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "fidelity_leap_verify.py", fidelity_leap_verify.default_config
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = fidelity_leap_verify.run(_CONFIG.value, progress=tqdm)
    print(fidelity_leap_verify.format_table(results))
    out = _CONFIG.value.output_dir
    print(f"wrote {out}/results.json")


if __name__ == "__main__":
    _common.run(main)
