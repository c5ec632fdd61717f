"""Research fidelity of First-Finish search, LATR and AdaDec (issue 19): each with the
paper's metric on a checkable proxy (the next held-out word), at three model sizes.

Usage::

    python experiments/fidelity_strategies.py --config=configs/fidelity_strategies.py \\
        [--config.num_prompts=64] [--config.targets='("tiny-target",)'] [--config.output_dir=...]

Writes ``results.json`` and ``results.png`` to ``config.output_dir`` and prints the
tables. See ``experiments/benchmarks/fidelity_strategies.py`` for what each figure means.
"""

import pathlib
import sys

from absl import logging
from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, fidelity_strategies  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "fidelity_strategies.py", fidelity_strategies.default_config
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = fidelity_strategies.run(_CONFIG.value, progress=tqdm)
    print(fidelity_strategies.format_table(results))
    print(f"wrote {_CONFIG.value.output_dir}/results.json")


if __name__ == "__main__":
    _common.run(main)
