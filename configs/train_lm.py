"""Config of experiments/train_lm.py: language models on the shipped corpus.

Select the model with ``--config.model=target`` or ``--config.model=draft`` (byte-level
GPT-2), or ``--config.model=llama_target`` / ``llama_draft`` (Llama family: RMSNorm,
RoPE, grouped-query attention, SwiGLU, tied head) together with
``--config.tokenizer=tiny-llama`` (the shipped byte-level BPE tokenizer, 4096 ids).
Any field can be overridden, e.g. ``--config.num_steps=100 --config.target.d_model=128``.
A sub-config's ``family`` (default ``"gpt2"``) picks ``models.FAMILIES[family]``,
which receives its other fields.

The defaults are the settings of the shipped ``tiny-target`` model; the shipped
``tiny-draft`` adds ``--config.model=draft --config.num_steps=2000
--config.learning_rate=3e-3``, and the shipped ``tiny-llama-target`` /
``tiny-llama-draft`` the flags recorded in their ``training.json``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "target"  # "target" | "draft" | "llama_target" | "llama_draft" | "llama_large"
    # "bytes": ids are the corpus bytes (the GPT-2 pair); or a load_tokenizer name or
    # folder, e.g. "tiny-llama" (byte-level BPE, 4096 ids) for the llama_* models.
    config.tokenizer = "bytes"

    # Model sizes (byte vocabulary, GPT-2 architecture, tied output head).
    config.target = ml_collections.ConfigDict(
        dict(vocab_size=256, num_layers=4, num_heads=4, d_model=192, max_length=256)
    )
    config.draft = ml_collections.ConfigDict(
        dict(vocab_size=256, num_layers=2, num_heads=2, d_model=64, max_length=256)
    )
    # Llama family on the BPE tokenizer (--config.tokenizer=tiny-llama): ~5.2M and
    # ~0.87M params, most of the draft's in its tied 4096 x 128 embedding.
    config.llama_target = ml_collections.ConfigDict(
        dict(
            family="llama",
            vocab_size=4096,
            num_layers=6,
            num_heads=8,
            num_kv_heads=2,
            d_model=256,
            mlp_dim=688,
            max_length=256,
            tie_embeddings=True,
            rope_theta=10000.0,
        )
    )
    config.llama_draft = ml_collections.ConfigDict(
        dict(
            family="llama",
            vocab_size=4096,
            num_layers=2,
            num_heads=4,
            num_kv_heads=1,
            d_model=128,
            mlp_dim=344,
            max_length=256,
            tie_embeddings=True,
            rope_theta=10000.0,
        )
    )

    # A larger Llama (~21.5M params) for the model-size trends of the research-fidelity
    # experiments (issue 19): not shipped (86 MB in float32); train it with
    # --config.model=llama_large --config.tokenizer=tiny-llama (flags in its training.json).
    config.llama_large = ml_collections.ConfigDict(
        dict(
            family="llama",
            vocab_size=4096,
            num_layers=7,
            num_heads=8,
            num_kv_heads=2,
            d_model=512,
            mlp_dim=1376,
            max_length=256,
            tie_embeddings=True,
            rope_theta=10000.0,
        )
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
    # Batch rows split over all devices: "auto" (when several processes run the script;
    # docs/launch.md), "on" (also one process with several devices) or "off".
    config.data_parallel = "auto"
    config.stop_after = 0  # > 0: stop after this many steps, as if killed (resume: run again)
    config.workdir = ""  # output directory; the --workdir flag takes precedence
    return config
