"""What compiling a generation costs, per drafter: trace and compile seconds, program size.

Usage::

    python experiments/compile_cost.py --config=configs/compile_cost.py

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; see
``experiments/benchmarks/compile_cost.py``.
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, compile_cost  # noqa: E402

_CONFIG = _common.define_config(_ROOT / "configs" / "compile_cost.py", compile_cost.default_config)


def main(argv):
    del argv
    results = compile_cost.run(_CONFIG.value, progress=tqdm)
    print(compile_cost.format_table(results))


if __name__ == "__main__":
    _common.run(main)
