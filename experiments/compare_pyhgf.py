"""lookahead_jax's HGF side by side with pyhgf 0.3.2: parity, speed, batching, gradients, NaNs.

Usage::

    python experiments/compare_pyhgf.py --config=configs/compare_pyhgf.py \\
        [--config.pyhgf=False] [--config.lengths="(1000,)"] [--config.nan_draws=100]

Writes ``results.json``, ``speed.png`` and ``trajectories.png`` to
``config.output_dir``; the same benchmark runs as ``lookahead-jax bench hgf``. See
``lookahead_jax/benchmarks/hgf.py`` for what is measured and how (pyhgf runs in its
own Python 3.12 environment, skipped with a message when that cannot be made).
"""

from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from lookahead_jax.benchmarks import hgf

_CONFIG = config_flags.DEFINE_config_file("config", default="configs/compare_pyhgf.py")


def main(argv):
    del argv
    results = hgf.run(_CONFIG.value, progress=tqdm)
    print(hgf.format_table(results))
    print(f"wrote {_CONFIG.value.output_dir}/results.json")


if __name__ == "__main__":
    app.run(main)
