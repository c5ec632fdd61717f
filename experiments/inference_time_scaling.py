"""Inference-time scaling with particle filters: a synthetic reasoning trap and an LM demo.

Usage::

    python experiments/inference_time_scaling.py --config=configs/inference_time_scaling.py \\
        [--config.num_seeds=2000] [--config.budgets='(4,8)'] [--config.lm_demo=False]

Writes ``results.json`` and ``results.png`` to ``config.output_dir``; the same
benchmark runs as ``lookahead-jax bench particles``. See
``lookahead_jax/benchmarks/inference_time_scaling.py`` for the environment and
what each column means.
"""

from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from lookahead_jax.benchmarks import inference_time_scaling

_CONFIG = config_flags.DEFINE_config_file("config", default="configs/inference_time_scaling.py")


def main(argv):
    del argv
    results = inference_time_scaling.run(_CONFIG.value, progress=tqdm)
    print(inference_time_scaling.format_table(results))


if __name__ == "__main__":
    app.run(main)
