"""Leap+Verify: the paper's offline tables at small scale, then online against plain training,
LAWA and optax.lookahead, on the reference transformer and the shipped corpus.

Usage::

    python experiments/leap_verify.py --config=configs/leap_verify.py \\
        [--config.seeds='(0, 1, 2)'] [--config.num_steps=1000] [--config.output_dir=...]

Writes ``results.json``, ``regimes.png`` (regime timeline), ``acceptance.png``
(acceptance heatmap) and ``online.png`` to ``config.output_dir`` and prints the
tables; the same study runs as ``lookahead-jax bench leap``. See
``lookahead_jax/benchmarks/leap_verify.py`` for what each figure means.
"""

import os

from absl import app, logging
from ml_collections import config_flags
from tqdm import tqdm

from lookahead_jax.benchmarks import leap_verify

_DEFAULT = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "leap_verify.py")
_CONFIG = config_flags.DEFINE_config_file("config", default=os.path.normpath(_DEFAULT))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = leap_verify.run(_CONFIG.value, progress=tqdm)
    print(leap_verify.format_table(results))
    print(f"wrote {_CONFIG.value.output_dir}/results.json")


if __name__ == "__main__":
    app.run(main)
