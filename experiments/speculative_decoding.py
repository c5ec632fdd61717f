"""Speculative decoding on the shipped models vs autoregressive decoding and HuggingFace.

Usage::

    python experiments/speculative_decoding.py --config=configs/speculative_decoding.py \\
        [--config.repeats=5] [--config.batch_sizes='(1,)'] [--config.peer=False]

Writes ``results.json`` and ``results.png`` to ``config.output_dir``. See
``experiments/benchmarks/speculative.py`` for what each column means.
"""

import os
import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, speculative  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "speculative_decoding.py", speculative.default_config
)


def main(argv):
    del argv
    results = speculative.run(_CONFIG.value, progress=tqdm)
    print(speculative.format_table(results))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _common.run(main)
