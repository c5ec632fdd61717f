"""Config of experiments/lm_figures.py: the foundation's figures on the shipped models."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.models = ("tiny-target", "tiny-draft")
    # Held-out scoring: non-overlapping windows of eval_seq_len + 1 bytes (0 = all of them).
    config.eval_seq_len = 255
    config.eval_max_windows = 0
    # Greedy decoding speed: ragged held-out prompts, median over `repeats` timed runs.
    config.batch_sizes = (1, 8)
    config.prompt_length = 64
    config.max_new_tokens = 128
    config.repeats = 5
    config.seed = 0
    # Peer: HuggingFace transformers (torch, CPU) greedy `generate` on the same weights.
    config.peer = True
    # torch intra-op threads: 1 is fastest for models this small and avoids OpenMP
    # spin-waiting when other processes share the 2 cores.
    config.peer_threads = 1
    config.output_dir = "outputs/lm_figures"
    return config
