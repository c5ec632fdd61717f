"""Real model families: the BPE Llama pair in float32 vs bfloat16, and a Qwen2.5-0.5B shape.

Usage::

    python experiments/real_models.py --config=configs/real_models.py \\
        [--config.small=True] [--config.sections='("qwen_shape",)'] [--config.repeats=3] \\
        [--config.qwen_dtype=bfloat16] [--config.output_dir=...]

Writes ``results.json`` and ``results.png`` to ``config.output_dir`` (default
``outputs/real_models``); the same benchmark runs as ``lookahead-jax bench real``.
See ``lookahead_jax/benchmarks/real_models.py`` for what each figure means.
"""

import os

from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from lookahead_jax.benchmarks import real_models

_CONFIG = config_flags.DEFINE_config_file("config", default="configs/real_models.py")


def main(argv):
    del argv
    results = real_models.run(_CONFIG.value, progress=tqdm)
    print(real_models.format_table(results))
    print(f"wrote {_CONFIG.value.output_dir}/results.json")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app.run(main)
