"""The speculation grid (issue 17): every drafter x batch {1, 4, 16} x temperature {0, 1} x
prompt {short, long} on both shipped model pairs, next to plain decoding, with the measured
acceptance a, cost ratio c, ideal speedup and efficiency per cell.

Usage::

    python experiments/speculation_grid.py --config=configs/speculation_grid.py \\
        [--config.repeats=5] [--config.batch_sizes='(1,)'] [--config.calibrated=True] \\
        [--config.quick=True]

Writes ``results.json``, ``results.png`` (heat map) and ``results.md`` (the README table) to
``config.output_dir`` and prints the table. See ``experiments/benchmarks/speculation_grid.py``
for the cells, the columns and how a and c are measured.
"""

import os
import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, speculation_grid  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "speculation_grid.py", speculation_grid.default_config
)


def main(argv):
    del argv
    results = speculation_grid.run(_CONFIG.value, progress=tqdm)
    print(speculation_grid.format_table(results))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _common.run(main)
