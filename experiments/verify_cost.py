"""Verification cost of a token tree vs a chain of as many tokens (issue 17, item 3).

Usage::

    python experiments/verify_cost.py --config=configs/verify_cost.py

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; see
``experiments/benchmarks/verify_cost.py``.
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, verify_cost  # noqa: E402

_CONFIG = _common.define_config(_ROOT / "configs" / "verify_cost.py", verify_cost.default_config)


def main(argv):
    del argv
    results = verify_cost.run(_CONFIG.value, progress=tqdm)
    print(verify_cost.format_table(results))


if __name__ == "__main__":
    _common.run(main)
