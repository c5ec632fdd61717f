"""Planned memory of prefill and a speculative step, default vs exact mode (no weights needed).

Usage::

    python experiments/memory_plan.py --config=configs/memory_plan.py [--config.batch=8]

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; see
``experiments/benchmarks/memory_plan.py``.
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, memory_plan  # noqa: E402

_CONFIG = _common.define_config(_ROOT / "configs" / "memory_plan.py", memory_plan.default_config)


def main(argv):
    del argv
    results = memory_plan.run(_CONFIG.value, progress=tqdm)
    print(memory_plan.format_table(results))


if __name__ == "__main__":
    _common.run(main)
