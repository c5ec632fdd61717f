"""Leap+Verify: the paper's offline tables at small scale, then online against plain training,
LAWA and optax.lookahead, on the reference transformer and the shipped corpus.

Usage::

    python experiments/leap_verify.py --config=configs/leap_verify.py \\
        [--config.seeds='(0, 1, 2)'] [--config.num_steps=1000] [--config.output_dir=...]

Writes ``results.json``, ``regimes.png`` (regime timeline), ``acceptance.png``
(acceptance heatmap) and ``online.png`` to ``config.output_dir`` and prints the
tables. See ``experiments/benchmarks/leap_verify.py`` for what each figure means.
"""

import pathlib
import sys

from absl import logging
from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, leap_verify  # noqa: E402

_CONFIG = _common.define_config(_ROOT / "configs" / "leap_verify.py", leap_verify.default_config)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = leap_verify.run(_CONFIG.value, progress=tqdm)
    print(leap_verify.format_table(results))
    print(f"wrote {_CONFIG.value.output_dir}/results.json")


if __name__ == "__main__":
    _common.run(main)
