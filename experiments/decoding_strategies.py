"""Lookahead decoding strategies (CNTP, AdaDec, LATR, First-Finish, momentum) vs greedy and
plain sampling on the shipped target model and held-out prompts.

Usage::

    python experiments/decoding_strategies.py --config=configs/decoding_strategies.py \\
        [--config.num_prompts=64] [--config.max_new_tokens=64] \\
        [--config.strategies='("greedy","sampling","cntp")'] [--config.output_dir=...]

Writes ``results.json`` and ``results.png`` to ``config.output_dir``. See
``experiments/benchmarks/decoding_strategies.py`` for the metrics and how each
published direction of effect is checked.
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, decoding_strategies  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "decoding_strategies.py", decoding_strategies.default_config
)


def main(argv):
    del argv
    results = decoding_strategies.run(_CONFIG.value, progress=tqdm)
    print(decoding_strategies.format_table(results))


if __name__ == "__main__":
    _common.run(main)
