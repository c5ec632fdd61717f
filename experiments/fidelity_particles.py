"""Particle filtering vs best-of-N with a real tiny language model on checkable addition (issue 19).

Usage::

    python experiments/fidelity_particles.py --config=configs/fidelity_particles.py \\
        [--config.num_problems=200] [--config.quick=True] [--config.output_dir=...]

Trains a tiny Llama on step-by-step addition (cached in ``output_dir/models``), then runs
greedy, best-of-N (+ majority vote), particle filtering (Puri et al.), entropic PF and
step-level beam search at every budget under noisy PRMs of several AUCs and the landed
study's overconfident-early reward. Writes ``results.json`` and ``results.png`` to
``config.output_dir`` and prints the tables. See ``experiments/benchmarks/fidelity_particles.py``.
"""

import pathlib
import sys

from absl import logging
from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common, fidelity_particles  # noqa: E402

_CONFIG = _common.define_config(
    _ROOT / "configs" / "fidelity_particles.py", fidelity_particles.default_config
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = fidelity_particles.run(_CONFIG.value, progress=tqdm)
    print(fidelity_particles.format_table(results))
    print(f"wrote {_CONFIG.value.output_dir}/results.json")


if __name__ == "__main__":
    _common.run(main)
