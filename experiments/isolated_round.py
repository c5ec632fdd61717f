"""What one drafting round costs a whole generation on this backend (issues 17 and 19).

Usage::

    python experiments/isolated_round.py --config=configs/isolated_round.py

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; see
``experiments/benchmarks/isolated_round.py``.
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, isolated_round  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "isolated_round.py", isolated_round.default_config
)


def main(argv):
    del argv
    results = isolated_round.run(_CONFIG.value, progress=tqdm)
    print(isolated_round.format_table(results))


if __name__ == "__main__":
    _common.run(main)
