"""The memory drafters' upkeep (init, observe, propose) next to a plain decoding step
(issue 17).

Usage::

    python experiments/memory_upkeep.py --config=configs/memory_upkeep.py

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; see
``experiments/benchmarks/memory_upkeep.py``.
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, memory_upkeep  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "memory_upkeep.py", memory_upkeep.default_config
)


def main(argv):
    del argv
    results = memory_upkeep.run(_CONFIG.value, progress=tqdm)
    print(memory_upkeep.format_table(results))


if __name__ == "__main__":
    _common.run(main)
