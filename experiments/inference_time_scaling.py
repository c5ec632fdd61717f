"""Inference-time scaling with particle filters: a synthetic reasoning trap and an LM demo.

Usage::

    python experiments/inference_time_scaling.py --config=configs/inference_time_scaling.py \\
        [--config.num_seeds=2000] [--config.budgets='(4,8)'] [--config.lm_demo=False]

Writes ``results.json`` and ``results.png`` to ``config.output_dir``. See
``experiments/benchmarks/inference_time_scaling.py`` for the environment and
what each column means.
"""

import pathlib
import sys

from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, inference_time_scaling  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "inference_time_scaling.py", inference_time_scaling.default_config
)


def main(argv):
    del argv
    results = inference_time_scaling.run(_CONFIG.value, progress=tqdm)
    print(inference_time_scaling.format_table(results))


if __name__ == "__main__":
    _common.run(main)
