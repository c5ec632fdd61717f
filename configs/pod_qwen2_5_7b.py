"""Config of experiments/pod_speculative.py: a Qwen2.5-7B-shaped target, 0.5B-shaped draft.

32 chips as ``data=8 x model=4``: a TPU v5p-64 slice (8 hosts x 4 chips, one process
each) or 4 nodes x 8 GPUs (one process per GPU: 32 processes). ``model=4`` because
Qwen2.5-7B's 28 query heads split over 1, 2, 4, 7, 14 or 28 devices, not 8; its 4 KV
heads split too, while the draft's 14 query and 2 KV heads are replicated (noted in the
plan; the draft is 0.5B). Each device then holds ~4.3 GiB of target and ~0.5 GiB of
draft parameters in bfloat16, and ~0.46 GiB of KV caches for 8 rows of 2,308 slots.

Plan it anywhere (no accelerator, no weights)::

    python experiments/pod_speculative.py --config=configs/pod_qwen2_5_7b.py \\
        --config.dry_run=True

On the slice, with random weights of these shapes (or ``--config.target=/path/to/
Qwen2.5-7B-Instruct --config.draft=/path/to/Qwen2.5-0.5B-Instruct`` for HuggingFace
folders; ``random_init=False`` then)::

    python experiments/pod_speculative.py --config=configs/pod_qwen2_5_7b.py

(see docs/launch.md for running it on every worker). The run checks that speculative
tokens equal plain greedy tokens; in bfloat16 a near-tie between two logits can flip
an argmax when K + 1 tokens are scored at once instead of one (``rows_differing`` in
``results.json``): ``--config.exact=True`` makes the equality exact, at some speed.
"""

import importlib.util
import pathlib


def _base():
    # Loaded by path: config files are read with importlib from any working directory.
    path = pathlib.Path(__file__).resolve().with_name("pod_speculative.py")
    spec = importlib.util.spec_from_file_location("_pod_speculative_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _base()
    config.update(
        target="qwen2.5-7b",
        draft="qwen2.5-0.5b",  # its vocabulary is padded to the target's 152,064 ids
        random_init=True,
        data=8,
        model=4,
        num_processes=8,  # v5p-64: 8 hosts x 4 chips
        batch_size=64,  # 8 rows per data shard, 8 per process
        prompt_len=2048,
        max_new_tokens=256,
        max_draft_tokens=4,
        always_draft=True,
        dtype="bfloat16",
        output_dir="outputs/pod_qwen2_5_7b",
    )
    return config
