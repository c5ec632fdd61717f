"""Token Recycling's 2x gap (issue 19): tokens per target call, verification and drafting
costs, measured and predicted speedups, side by side.

Usage::

    python experiments/fidelity_token_recycling.py \\
        --config=configs/fidelity_token_recycling.py \\
        [--config.repeats=7] [--config.tree_sizes='(80, 32, 8)'] [--config.output_dir=...]

Writes ``results.json`` and ``results.png`` (tau by tree size, v(n) by model size, measured
vs predicted vs counterfactual speedups) to ``config.output_dir`` and prints the tables. See
``experiments/benchmarks/fidelity_token_recycling.py`` for what each number means.
"""

import pathlib
import sys

from absl import logging
from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, fidelity_token_recycling  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "fidelity_token_recycling.py", fidelity_token_recycling.default_config
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = fidelity_token_recycling.run(_CONFIG.value, progress=tqdm)
    print(fidelity_token_recycling.format_table(results))
    print(f"wrote {_CONFIG.value.output_dir}/results.json ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    _common.run(main)
