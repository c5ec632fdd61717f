"""The lookahead family (issue 16): every training-free drafter on free text, prompt copying
and a stream of related requests, on both shipped model pairs, vs plain decoding.

Usage::

    python experiments/lookahead_family.py --config=configs/lookahead_family.py \\
        [--config.repeats=5] [--config.batch_sizes='(1,)'] [--config.quick=True]

Writes ``results.json`` and ``results.png`` to ``config.output_dir`` and prints the table.
See ``experiments/benchmarks/lookahead_family.py`` for the workloads and the columns.
"""

import os
import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, lookahead_family  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "lookahead_family.py", lookahead_family.default_config
)


def main(argv):
    del argv
    results = lookahead_family.run(_CONFIG.value, progress=tqdm)
    print(lookahead_family.format_table(results))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _common.run(main)
