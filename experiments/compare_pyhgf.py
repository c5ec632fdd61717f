"""lookahead_jax's HGF side by side with pyhgf 0.3.2: parity, speed, batching, gradients, NaNs.

Usage::

    python experiments/compare_pyhgf.py --config=configs/compare_pyhgf.py \\
        [--config.pyhgf=False] [--config.lengths="(1000,)"] [--config.nan_draws=100]

Writes ``results.json``, ``speed.png`` and ``trajectories.png`` to
``config.output_dir``. See
``experiments/benchmarks/hgf.py`` for what is measured and how (pyhgf runs in its
own Python 3.12 environment, skipped with a message when that cannot be made).
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, hgf  # noqa: E402

_CONFIG = _common.define_config(_ROOT / "configs" / "compare_pyhgf.py", hgf.default_config)


def main(argv):
    del argv
    results = hgf.run(_CONFIG.value, progress=tqdm)
    print(hgf.format_table(results))
    print(f"wrote {_CONFIG.value.output_dir}/results.json")


if __name__ == "__main__":
    _common.run(main)
