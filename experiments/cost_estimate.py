"""The size-based cost estimate next to calibrated rounds (issue 17, item 1).

Usage::

    python experiments/cost_estimate.py --config=configs/cost_estimate.py

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; see
``experiments/benchmarks/cost_estimate.py``.
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, cost_estimate  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "cost_estimate.py", cost_estimate.default_config
)


def main(argv):
    del argv
    results = cost_estimate.run(_CONFIG.value, progress=tqdm)
    print(cost_estimate.format_table(results))


if __name__ == "__main__":
    _common.run(main)
