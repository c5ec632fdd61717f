"""Speculative decoding on the shipped models vs autoregressive decoding and HuggingFace.

Usage::

    python experiments/speculative_decoding.py --config=configs/speculative_decoding.py \\
        [--config.repeats=5] [--config.batch_sizes='(1,)'] [--config.peer=False]

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; the same
benchmark runs as ``lookahead-jax bench spec``. See
``lookahead_jax/benchmarks/speculative.py`` for what each column means.
"""

import os

from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from lookahead_jax.benchmarks import speculative

_CONFIG = config_flags.DEFINE_config_file("config", default="configs/speculative_decoding.py")


def main(argv):
    del argv
    results = speculative.run(_CONFIG.value, progress=tqdm)
    print(speculative.format_table(results))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app.run(main)
