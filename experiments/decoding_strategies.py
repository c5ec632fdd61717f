"""Lookahead decoding strategies (CNTP, AdaDec, LATR, First-Finish, momentum) vs greedy and
plain sampling on the shipped target model and held-out prompts.

Usage::

    python experiments/decoding_strategies.py --config=configs/decoding_strategies.py \\
        [--config.num_prompts=64] [--config.max_new_tokens=64] \\
        [--config.strategies='("greedy","sampling","cntp")'] [--config.output_dir=...]

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; the same
benchmark runs as ``lookahead-jax bench strategies``. See
``lookahead_jax/benchmarks/decoding_strategies.py`` for the metrics and how each
published direction of effect is checked.
"""

from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from lookahead_jax.benchmarks import decoding_strategies

_CONFIG = config_flags.DEFINE_config_file("config", default="configs/decoding_strategies.py")


def main(argv):
    del argv
    results = decoding_strategies.run(_CONFIG.value, progress=tqdm)
    print(decoding_strategies.format_table(results))


if __name__ == "__main__":
    app.run(main)
