"""Config of experiments/train_lm.py: byte-level GPT-2 models on the shipped corpus.

Select the model with ``--config.model=target`` or ``--config.model=draft``; any
field can be overridden, e.g. ``--config.num_steps=100 --config.target.d_model=128``.
The defaults are the settings of the shipped ``tiny-target`` model; the shipped
``tiny-draft`` adds ``--config.model=draft --config.num_steps=2000
--config.learning_rate=3e-3`` (see each model's ``training.json``).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "target"  # "target" | "draft": which sub-config below is trained

    # Model sizes (byte vocabulary, GPT-2 architecture, tied output head).
    config.target = ml_collections.ConfigDict(
        dict(vocab_size=256, num_layers=4, num_heads=4, d_model=192, max_length=256)
    )
    config.draft = ml_collections.ConfigDict(
        dict(vocab_size=256, num_layers=2, num_heads=2, d_model=64, max_length=256)
    )

    # Data: random windows of the training split; the batch of step t is a pure
    # function of (seed, t), so resumed runs replay the same data order.
    config.seq_len = 256
    config.batch_size = 16
    config.seed = 0

    # Optimiser: AdamW, linear warmup then cosine decay, global-norm clipping.
    config.num_steps = 1800
    config.learning_rate = 2e-3
    config.warmup_steps = 100
    config.end_lr_ratio = 0.05  # final learning rate as a fraction of the peak
    config.weight_decay = 0.1
    config.b2 = 0.99
    config.grad_clip = 1.0

    # Evaluation, logging and checkpoints.
    config.eval_every = 300  # held-out bits per byte every so many steps and at the end
    config.eval_max_windows = 0  # 0: every non-overlapping held-out window of seq_len + 1
    config.eval_batch_size = 32
    config.log_every = 10
    config.checkpoint_every = 300
    config.max_checkpoints = 2
    config.export_hf = True  # write workdir/hf/{config.json, model.safetensors} at the end
    config.progress_bar = True
    config.workdir = ""  # output directory; the --workdir flag takes precedence
    return config
