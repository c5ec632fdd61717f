"""Config of experiments/pod_workloads.py: every pillar's workload over all processes.

Small CPU defaults (the sizes of tests/test_multiprocess.py); on a pod, scale the sizes
up (``--config.num_particles=1048576 --config.num_subjects=65536 ...``). The mesh sizes
must divide: ``num_particles``, ``num_subjects`` and ``leap_batch`` by all devices,
the prompts by ``data``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "main"  # "main", or "resume" (fresh processes restore the checkpoints)
    config.workloads = ("generation", "particles", "hgf", "leap")
    config.output_dir = "outputs/pod_workloads"  # results and checkpoints (shared by all)
    # generation: the shipped BPE Llama pair on a data x (devices / data) mesh
    config.data = 1  # devices along "data" (the rest along "model"); the test uses 2
    config.texts = ("The return value is", "import os\n", "Raise an error if the", "def main():")
    config.prompt_width = 12  # tokens; every text above encodes to fewer
    config.max_new_tokens = 8
    config.compare_plain_greedy = True  # also run plain greedy and compare the tokens
    # particles: bootstrap filter on a 3-D linear-Gaussian model
    config.num_particles = 4096
    config.filter_steps = 8  # the checkpoint is taken after half of them
    # hgf: MAP fit of the tonic volatility of a 3-level continuous HGF per subject
    config.num_subjects = 64
    config.series_steps = 40
    config.fit_steps = 4
    # leap: Leap+Verify around Adam on a small regression network, data parallel
    config.leap_steps = 20  # checkpointed after half of them
    config.leap_batch = 16
    return config
