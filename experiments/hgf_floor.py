"""The HGF's hardware floor: a scalar C loop of the same step next to our compiled scan
(issue 18).

Usage::

    python experiments/hgf_floor.py --config=configs/hgf_floor.py

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; see
``experiments/benchmarks/hgf_floor.py``.
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, hgf_floor  # noqa: E402

_CONFIG = _common.define_config(_ROOT / "configs" / "hgf_floor.py", hgf_floor.default_config)


def main(argv):
    del argv
    results = hgf_floor.run(_CONFIG.value, progress=tqdm)
    print(hgf_floor.format_table(results))


if __name__ == "__main__":
    _common.run(main)
