"""Config of experiments/pod_speculative.py: speculative greedy generation on a data x model mesh.

The defaults run on one CPU device with the shipped BPE Llama pair. Every field can be
overridden, e.g. on the 8 simulated CPU devices of the tests::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/pod_speculative.py \\
        --config=configs/pod_speculative.py --config.data=2 --config.model=4

and ``--config.dry_run=True`` prints the plan (mesh, parameter and KV-cache bytes per
device, batch per process) without an accelerator or weights. ``configs/pod_qwen2_5_7b.py``
is the realistic setting (Qwen2.5-7B target, Qwen2.5-0.5B draft on 32 chips).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # A shipped checkpoint (models.available_pretrained(): "tiny-llama-target", "tiny-target",
    # ...), a preset shape (models.plan.PRESETS: "qwen2.5-7b", "qwen2.5-0.5b",
    # "llama-3.1-8b", "llama-3.2-1b"; weights only with random_init=True) or a local
    # HuggingFace model folder (load_hf).
    config.target = "tiny-llama-target"
    config.draft = "tiny-llama-draft"
    config.random_init = False  # random weights of the configs' shapes (presets need it)
    # The mesh: data x model must equal the devices of all processes together.
    config.data = 1  # devices along "data": batch rows split over it
    config.model = 1  # devices along "model": heads and MLP columns split over it
    # Processes the dry run plans for (one per host, or per GPU). A real run counts its own
    # processes (set by the --num_processes flag, the environment or the cluster).
    config.num_processes = 1
    config.batch_size = 4  # global rows; each process builds only its own rows' prompts
    config.prompt_len = 32  # prompt width P in tokens (shorter prompts are padded)
    config.max_new_tokens = 32
    config.max_draft_tokens = 4  # K drafted tokens per round
    config.always_draft = True  # draft K tokens every round (else the cost-aware controller)
    config.exact = False  # generate(exact=True): greedy equality even at float near-ties
    config.dtype = "float32"  # parameters and KV caches ("bfloat16" on accelerators)
    config.seed = 0  # prompts (row i draws from seed and i) and random weights
    config.dry_run = False  # print and save the plan only: nothing allocated, no accelerator
    config.output_dir = "outputs/pod_speculative"
    return config
