"""Real model families: the BPE Llama pair in float32 vs bfloat16, and a Qwen2.5-0.5B shape.

Usage::

    python experiments/real_models.py --config=configs/real_models.py \\
        [--config.small=True] [--config.sections='("qwen_shape",)'] [--config.repeats=3] \\
        [--config.qwen_dtype=bfloat16] [--config.output_dir=...]

Writes ``results.json`` and ``results.png`` to ``config.output_dir`` (default
``outputs/real_models``).
See ``experiments/benchmarks/real_models.py`` for what each figure means.
"""

import os
import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, real_models  # noqa: E402

_CONFIG = _common.define_config(_ROOT / "configs" / "real_models.py", real_models.default_config)


def main(argv):
    del argv
    results = real_models.run(_CONFIG.value, progress=tqdm)
    print(real_models.format_table(results))
    print(f"wrote {_CONFIG.value.output_dir}/results.json")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _common.run(main)
