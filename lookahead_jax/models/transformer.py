"""The one decoder-only transformer (GPT-2, Llama/Mistral, Qwen2/3, Gemma 2) as pure functions.

Parameters are a plain dict of arrays; the blocks' parameters are stacked on a
leading layer axis so that the forward pass is one ``lax.scan`` (fast to
compile) and the first ``l`` layers are a slice (early-exit drafting). Kernels
are ``[in, out]``; ``Q = num_heads * head_dim``, ``K = num_kv_heads * head_dim``::

    {"wte": [V, D],                               token embedding
     "wpe": [P, D],                               learned positions only (GPT-2)
     "lm_head": [D, V],                           untied heads only
     "layers": {
        "ln_1": norm,                             before attention
        "attn": {"q_kernel": [L, D, Q], "k_kernel": [L, D, K], "v_kernel": [L, D, K],
                 "out_kernel": [L, Q, D],
                 "q_bias": [L, Q], "k_bias": [L, K], "v_bias": [L, K],   if qkv_bias
                 "out_bias": [L, D],                                     if out_bias
                 "q_norm": {"scale": [L, Dh]}, "k_norm": {...}},          if qk_norm
        "ln_post_attn": norm, "ln_post_mlp": norm, if sandwich_norms (Gemma 2)
        "ln_2": norm,                             before the MLP
        "mlp": gated:  {"gate_kernel": [L, D, F], "up_kernel": [L, D, F],
                        "down_kernel": [L, F, D], (+ "gate_bias", "up_bias", "down_bias")}
               GPT-2:  {"fc_kernel": [L, D, F], "fc_bias": [L, F],
                        "proj_kernel": [L, F, D], "proj_bias": [L, D]}},
     "ln_f": norm}                                final norm

where ``norm`` is ``{"scale": [.., D], "bias": [.., D]}`` for LayerNorm and
``{"scale": [.., D]}`` for RMSNorm.

Precision: activations and the KV cache keep the parameters' dtype (float32 or
bfloat16); norms, rotary angles, softmax and logits are computed in float32
and the logits come back in float32.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from jax import lax

from lookahead_jax import _checks
from lookahead_jax.models.cache import CacheEntries, KVCache, append
from lookahead_jax.models.config import TransformerConfig

Params = dict[str, Any]
_F32 = jnp.float32


def _norm_params(config: TransformerConfig, *lead: int, dtype: Any) -> dict[str, jax.Array]:
    d = config.d_model
    if config.norm == "layer_norm":
        return {"scale": jnp.ones((*lead, d), dtype), "bias": jnp.zeros((*lead, d), dtype)}
    # Gemma's (1 + w) norm stores w near 0.
    fill = 0.0 if config.norm == "rms_norm_plus_one" else 1.0
    return {"scale": jnp.full((*lead, d), fill, dtype)}


def init_params(config: TransformerConfig, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """GPT-2 style initialisation: N(0, 0.02) weights, residual outputs scaled by 1/sqrt(2L).

    Args:
      config: the model's configuration.
      key: PRNG key.
      dtype: of every parameter (float32 or bfloat16).
    Returns:
      Parameters in the layout of this module's docstring.
    """
    d, f, n = config.d_model, config.hidden_dim, config.num_layers
    q_width = config.num_heads * config.head_dim
    kv_width = config.num_kv_heads * config.head_dim
    # One key per role, in the order of the GPT-2-only releases, and fused q/k/v
    # (gate/up) draws split afterwards: a GPT-2 config gets the same weights as before.
    keys = jax.random.split(key, 6)
    std = 0.02
    residual_std = std / (2 * n) ** 0.5

    def normal(index: int, shape: tuple[int, ...], scale: float) -> jax.Array:
        return (scale * jax.random.normal(keys[index], shape, _F32)).astype(dtype)

    def zeros(*shape: int) -> jax.Array:
        return jnp.zeros(shape, dtype)

    qkv = normal(2, (n, d, q_width + 2 * kv_width), std)
    attn = {
        "q_kernel": qkv[..., :q_width],
        "k_kernel": qkv[..., q_width : q_width + kv_width],
        "v_kernel": qkv[..., q_width + kv_width :],
        "out_kernel": normal(3, (n, q_width, d), residual_std),
    }
    if config.qkv_bias:
        attn.update(q_bias=zeros(n, q_width), k_bias=zeros(n, kv_width), v_bias=zeros(n, kv_width))
    if config.out_bias:
        attn["out_bias"] = zeros(n, d)
    if config.qk_norm:
        attn["q_norm"] = {"scale": jnp.ones((n, config.head_dim), dtype)}
        attn["k_norm"] = {"scale": jnp.ones((n, config.head_dim), dtype)}
    if config.gated_mlp:
        gate_up = normal(4, (n, d, 2 * f), std)
        mlp = {
            "gate_kernel": gate_up[..., :f],
            "up_kernel": gate_up[..., f:],
            "down_kernel": normal(5, (n, f, d), residual_std),
        }
        if config.mlp_bias:
            mlp.update(gate_bias=zeros(n, f), up_bias=zeros(n, f), down_bias=zeros(n, d))
    else:
        mlp = {
            "fc_kernel": normal(4, (n, d, f), std),
            "proj_kernel": normal(5, (n, f, d), residual_std),
        }
        if config.mlp_bias:
            mlp.update(fc_bias=zeros(n, f), proj_bias=zeros(n, d))
    layers: Params = {
        "ln_1": _norm_params(config, n, dtype=dtype),
        "attn": attn,
        "ln_2": _norm_params(config, n, dtype=dtype),
        "mlp": mlp,
    }
    if config.sandwich_norms:
        layers["ln_post_attn"] = _norm_params(config, n, dtype=dtype)
        layers["ln_post_mlp"] = _norm_params(config, n, dtype=dtype)
    params: Params = {
        "wte": normal(0, (config.vocab_size, d), std),
        "layers": layers,
        "ln_f": _norm_params(config, dtype=dtype),
    }
    if config.positions == "learned":
        params["wpe"] = normal(1, (config.max_length, d), 0.01)
    if not config.tie_embeddings:
        head_key = jax.random.fold_in(key, 6)
        params["lm_head"] = (std * jax.random.normal(head_key, (d, config.vocab_size))).astype(
            dtype
        )
    return params


def param_shapes(config: TransformerConfig, dtype: Any = jnp.float32) -> Params:
    """The shape of every parameter, as a pytree of ``jax.ShapeDtypeStruct``."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0), dtype))


def param_dtype(params: Params) -> jnp.dtype:
    """The dtype activations and caches take: the token embedding's."""
    return jnp.result_type(params["wte"])


def _mean(x: jax.Array, exact: bool) -> jax.Array:
    if exact:
        return (tree_sum(x, axis=-1) / x.shape[-1])[..., None]
    return jnp.mean(x, axis=-1, keepdims=True)


def _inverse_sqrt(x: jax.Array, exact: bool) -> jax.Array:
    # XLA's vectorised rsqrt differs from its scalar path; sqrt and divide are exact.
    return 1.0 / jnp.sqrt(x) if exact else lax.rsqrt(x)


def norm(
    config: TransformerConfig,
    params: dict[str, jax.Array],
    x: jax.Array,
    exact: bool = False,
    kind: str | None = None,
) -> jax.Array:
    """LayerNorm or RMSNorm (``config.norm`` unless ``kind``) over the last axis, in float32."""
    kind = config.norm if kind is None else kind
    eps = config.layer_norm_eps
    h = x.astype(_F32)
    scale = params["scale"].astype(_F32)
    if kind == "layer_norm":
        h = h - _mean(h, exact)
        h = h * _inverse_sqrt(_mean(jnp.square(h), exact) + eps, exact)
        out = h * scale + params["bias"].astype(_F32)
    else:
        h = h * _inverse_sqrt(_mean(jnp.square(h), exact) + eps, exact)
        out = h * (1.0 + scale) if kind == "rms_norm_plus_one" else h * scale
    return out.astype(x.dtype)


def layer_norm(
    params: dict[str, jax.Array], x: jax.Array, eps: float, exact: bool = False
) -> jax.Array:
    """GPT-2's LayerNorm (kept for callers of the GPT-2-only API)."""
    config = TransformerConfig(layer_norm_eps=eps)
    return norm(config, params, x, exact, kind="layer_norm")


def final_norm(config: TransformerConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """The final norm applied to residual-stream states ``[..., D]``."""
    return norm(config, params["ln_f"], hidden)


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


def _head(config: TransformerConfig, params: Params) -> jax.Array:
    """The output head ``[D, V]``: the embedding transposed when tied."""
    return params["wte"].T if config.tie_embeddings else params["lm_head"]


def logits_from_hidden(config: TransformerConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """Final norm, output head and soft-cap: ``[..., D] -> [..., V]`` float32.

    Applied to ``hidden[l]`` from ``apply(..., return_hidden=True)`` it gives the
    logits of an early exit after ``l`` blocks.
    """
    normed = final_norm(config, params, hidden)
    if config.tie_embeddings:
        # Against the embedding as stored ([V, D]): a transposed copy would be made at
        # every call inside a conditional branch (XLA does not hoist out of branches).
        logits = jnp.einsum("...d,vd->...v", normed, params["wte"], preferred_element_type=_F32)
    else:
        logits = jnp.matmul(normed, params["lm_head"], preferred_element_type=_F32)
    return _softcap(logits.astype(_F32), config.final_logit_softcap)


def rope_frequencies(config: TransformerConfig) -> np.ndarray:
    """``inv_freq [head_dim / 2]`` float32 after ``config.rope_type``'s scaling.

    Computed in NumPy float32 at trace time as transformers computes it in torch.
    """
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
    if config.rope_type == "linear":
        inv_freq = inv_freq / np.float32(config.rope_factor)
    elif config.rope_type == "llama3":
        factor = np.float32(config.rope_factor)
        low, high = (
            np.float32(config.rope_low_freq_factor),
            np.float32(config.rope_high_freq_factor),
        )
        original = np.float32(config.rope_original_max_length)
        wavelength = np.float32(2 * np.pi) / inv_freq
        low_freq_wavelength, high_freq_wavelength = original / low, original / high
        scaled = np.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
        smooth = (original / wavelength - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        in_band = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
        inv_freq = np.where(in_band, blended, scaled).astype(np.float32)
    return inv_freq.astype(np.float32)


def _rope_tables(
    config: TransformerConfig, positions: jax.Array, exact: bool
) -> tuple[jax.Array, jax.Array]:
    """``cos, sin [B, S, head_dim]`` float32 for the given positions."""
    inv_freq = jnp.asarray(rope_frequencies(config))
    if exact:
        # One table over every position, gathered: the values of cos/sin then never
        # depend on how many tokens share the call (vectorised and scalar paths differ).
        angles = jnp.arange(config.max_length, dtype=_F32)[:, None] * inv_freq
        table = jnp.concatenate([angles, angles], axis=-1)
        cos_table, sin_table = jnp.cos(table), jnp.sin(table)
        index = jnp.clip(positions, 0, config.max_length - 1)
        return cos_table[index], sin_table[index]
    angles = positions.astype(_F32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half rotary positions on ``x [B, S, N, Dh]``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None].astype(x.dtype), sin[:, :, None].astype(x.dtype)
    return x * cos + rotated * sin


def _attention(
    config: TransformerConfig,
    q: jax.Array,  # [B, S, H, Dh]
    k_new: jax.Array,  # [B, S, KV, Dh]
    v_new: jax.Array,  # [B, S, KV, Dh]
    new_mask: jax.Array,  # [B, S, S] bool: query i sees new token j
    k_prefix: jax.Array | None,  # [B, T, KV, Dh] cache before this call
    v_prefix: jax.Array | None,
    prefix_mask: jax.Array | None,  # [B, S or 1, T] bool: query i sees slot t
    context: tuple[jax.Array, jax.Array, jax.Array] | None = None,  # keys, values [B, E, KV,
    # Dh] and mask [B, S, E]: entries outside the cache this call also attends to
) -> jax.Array:
    # Query head h reads key/value head h // group (transformers' repeat_kv order).
    q = rearrange(q, "b s (k g) d -> b s k g d", k=config.num_kv_heads)
    scale = config.attention_scale
    neg = jnp.finfo(_F32).min

    def scores_against(keys: jax.Array, mask: jax.Array) -> jax.Array:
        scores = jnp.einsum("bikgd,bjkd->bkgij", q, keys, preferred_element_type=_F32) * scale
        scores = _softcap(scores, config.attn_logit_softcap)
        return jnp.where(mask[:, None, None], scores, neg)

    def mix(weights: jax.Array, values: jax.Array) -> jax.Array:
        return jnp.einsum("bkgij,bjkd->bikgd", weights, values.astype(_F32))

    scores = scores_against(k_new, new_mask)
    if k_prefix is None and context is None:
        attended = mix(jax.nn.softmax(scores, axis=-1), v_new)
        return rearrange(attended, "b s k g d -> b s (k g) d").astype(q.dtype)
    # One softmax over prefix, context and new keys, without concatenating the cache
    # (a concatenation would copy this layer's whole cache at every call).
    sources = [(scores, v_new)]
    if k_prefix is not None:
        sources.append((scores_against(k_prefix, prefix_mask), v_prefix))
    if context is not None:
        sources.append((scores_against(context[0], context[2]), context[1]))
    top = functools.reduce(jnp.maximum, [jnp.max(x, -1, keepdims=True) for x, _ in sources])
    weights = [jnp.exp(x - top) for x, _ in sources]
    total = sum(jnp.sum(w, -1) for w in weights)  # [B, KV, G, S]
    attended = sum(mix(w, v) for w, (_, v) in zip(weights, sources, strict=True))
    attended = attended / rearrange(total, "b k g s -> b s k g 1")  # [B, S, KV, G, Dh]
    return rearrange(attended, "b s k g d -> b s (k g) d").astype(q.dtype)


def tree_sum(x: jax.Array, axis: int) -> jax.Array:
    """Sum over ``axis`` by a fixed binary tree of elementwise additions.

    XLA's reductions and matmul kernels may group additions differently for
    different shapes (e.g. the number of tokens in a call), changing results in
    the last bits. Elementwise additions are exact IEEE operations, so a sum
    built only from them depends on the values alone, never on the shape of
    the other axes.
    """
    x = jnp.moveaxis(x, axis, 0)
    size = x.shape[0]
    width = 1 << max(0, (size - 1).bit_length())
    if width != size:  # pad with exact zeros up to a power of two
        x = jnp.concatenate([x, jnp.zeros((width - size, *x.shape[1:]), x.dtype)])
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        x = x[:half] + x[half:]
    return x[0]


def tree_max(x: jax.Array, axis: int) -> jax.Array:
    """Max over ``axis`` by a fixed binary tree of elementwise maxima (see ``tree_sum``).

    The max itself is exact in any order, but an XLA reduce fused with what
    follows may change how the following ``exp`` is compiled for some shapes.
    """
    x = jnp.moveaxis(x, axis, 0)
    size = x.shape[0]
    width = 1 << max(0, (size - 1).bit_length())
    if width != size:
        x = jnp.concatenate([x, jnp.full((width - size, *x.shape[1:]), -jnp.inf, x.dtype)])
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        x = jnp.maximum(x[:half], x[half:])
    return x[0]


# Exact mode materialises elementwise products before its fixed-order sums; past this
# many float32 elements per call it works through the rows in blocks (lax.map), so a
# prefill or a wide verification needs block-sized memory, not [rows, D_in, D_out].
_EXACT_BLOCK_ELEMENTS = 1 << 24  # 64 MiB of float32 products per block


def _products(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a * b`` kept apart from the sums that follow (an optimisation barrier).

    Fused with the first addition of a ``tree_sum``, a product may compile to a fused
    multiply-add in one program and to a rounded product plus a sum in another (XLA
    decides per fusion context), which changes the last bit; exact mode needs every
    product rounded once, everywhere.
    """
    return lax.optimization_barrier(a * b)


def _in_row_blocks(fn, x: jax.Array, elements_per_row: int) -> jax.Array:
    """``fn`` over ``x [N, ...]`` in blocks of rows small enough for the product budget.

    Each row's result depends only on that row (``fn`` reduces within rows by fixed
    elementwise trees), so the blocking never changes a bit.
    """
    num = x.shape[0]
    block = max(1, _EXACT_BLOCK_ELEMENTS // max(1, elements_per_row))
    if num <= block:
        return fn(x)
    num_blocks = -(-num // block)
    padded = jnp.pad(x, [(0, num_blocks * block - num)] + [(0, 0)] * (x.ndim - 1))
    out = lax.map(fn, padded.reshape(num_blocks, block, *x.shape[1:]))
    return out.reshape(num_blocks * block, *out.shape[2:])[:num]


def _dense(x: jax.Array, kernel: jax.Array, exact: bool) -> jax.Array:
    """``x @ kernel``; with ``exact``, products summed by ``tree_sum`` (shape-independent)."""
    if not exact:
        return x @ kernel
    # Products and sums in float32 (bfloat16 sums would lose most of their bits).
    kernel32 = kernel.astype(_F32)
    rows = x.reshape(-1, x.shape[-1]).astype(_F32)
    out = _in_row_blocks(
        lambda r: tree_sum(_products(r[:, :, None], kernel32), axis=-2),
        rows,
        kernel.shape[0] * kernel.shape[1],
    )
    return out.reshape(*x.shape[:-1], kernel.shape[-1]).astype(x.dtype)


def _exact_attention(
    config: TransformerConfig,
    q: jax.Array,  # [B, S, H, Dh]
    keys: jax.Array,  # [B, T, KV, Dh] cache after this call's write
    values: jax.Array,  # [B, T, KV, Dh]
    visible: jax.Array,  # [B, S, T] bool
) -> jax.Array:
    """Attention over the whole cache with width-independent reductions (see ``_dense``).

    Query tokens are independent of each other here, so they go through in blocks
    (``_in_row_blocks``) when the products of all of them would be large.
    """
    q = rearrange(q.astype(_F32), "b s (k g) d -> s b 1 k g d", k=config.num_kv_heads)
    keys = rearrange(keys.astype(_F32), "b t k d -> b t k 1 d")
    values = rearrange(values.astype(_F32), "b t k d -> b t k 1 d")

    def attend(block):  # [s, B, 1, KV, G, Dh] and its visibility [s, B, T]
        q, visible = block
        scores = tree_sum(_products(q, keys), axis=-1) * config.attention_scale  # [s,B,T,KV,G]
        scores = _softcap(scores, config.attn_logit_softcap)
        scores = jnp.where(visible[..., None, None], scores, -jnp.inf)
        weights = jnp.exp(scores - tree_max(scores, axis=2)[:, :, None])
        weights = weights / tree_sum(weights, axis=2)[:, :, None]
        return tree_sum(_products(weights[..., None], values), axis=2)  # [s, B, KV, G, Dh]

    per_query = keys.shape[0] * keys.shape[1] * q.shape[-3] * q.shape[-2] * q.shape[-1]
    attended = _in_row_blocks_pair(attend, q, jnp.moveaxis(visible, 1, 0), per_query)
    return rearrange(attended, "s b k g d -> b s (k g) d")


def _in_row_blocks_pair(fn, x: jax.Array, y: jax.Array, elements_per_row: int) -> jax.Array:
    """``_in_row_blocks`` for ``fn((x_block, y_block))`` over two arrays sharing axis 0."""
    num = x.shape[0]
    block = max(1, _EXACT_BLOCK_ELEMENTS // max(1, elements_per_row))
    if num <= block:
        return fn((x, y))
    num_blocks = -(-num // block)

    def split(a):
        a = jnp.pad(a, [(0, num_blocks * block - num)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(num_blocks, block, *a.shape[1:])

    out = lax.map(fn, (split(x), split(y)))
    return out.reshape(num_blocks * block, *out.shape[2:])[:num]


def _write_layer(buffer: jax.Array, update: jax.Array, starts: jax.Array) -> jax.Array:
    """Writes ``update [B, S, KV, Dh]`` into one layer's ``buffer [B, T, KV, Dh]`` at ``starts``.

    Slots past the end are dropped rather than clamped (as in ``cache.append``).
    """
    num_new = update.shape[1]
    slots = starts[:, None] + jnp.arange(num_new, dtype=starts.dtype)[None, :]
    rows = jnp.arange(buffer.shape[0])[:, None]
    return buffer.at[rows, slots].set(update.astype(buffer.dtype), mode="drop")


def _check_inputs(
    config: TransformerConfig,
    tokens: Any,
    cache: KVCache | None,
    tree_mask: Any,
    positions: Any,
    defer_write: bool = False,
) -> None:
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"`config` must be a TransformerConfig; got {type(config).__name__}.")
    _checks.check_integer("tokens", tokens)
    _checks.check_rank("tokens", tokens, 2, "[batch, new_tokens]")
    batch, num_new = jnp.shape(tokens)
    if num_new == 0:
        raise ValueError("`tokens` must hold at least one new token per row; got shape (B, 0).")
    _checks.check_range("tokens", tokens, 0, config.vocab_size)
    if tree_mask is not None:
        _checks.check_bool("tree_mask", tree_mask)
        _checks.check_shape("tree_mask", tree_mask, (batch, num_new, num_new), "[B, S, S]")
    if positions is not None:
        _checks.check_integer("positions", positions)
        _checks.check_shape("positions", positions, (batch, num_new), "[B, S]")
        _checks.check_range("positions", positions, 0, config.max_length)
    if cache is None:
        if num_new > config.max_length and positions is None:
            raise ValueError(
                f"`tokens` has {num_new} tokens per row but the model has only "
                f"config.max_length={config.max_length} positions."
            )
        return
    expected = (config.num_layers, batch, None, config.num_kv_heads, config.head_dim)
    meaning = "[L, B, T, KV, Dh] matching config"
    _checks.check_shape("cache.keys", cache.keys, expected, meaning)
    _checks.check_shape("cache.values", cache.values, expected, meaning)
    _checks.check_shape("cache.lengths", cache.lengths, (batch,), "one length per row")
    if defer_write:  # nothing is appended: the caller writes what it keeps
        return
    if num_new > cache.capacity:
        raise ValueError(
            f"`tokens` appends {num_new} tokens per row but the cache holds only "
            f"{cache.capacity} slots."
        )
    lengths = _checks.concrete_value(cache.lengths)
    if lengths is not None and lengths.size and int(lengths.max()) + num_new > cache.capacity:
        raise ValueError(
            f"appending {num_new} tokens would overflow the cache: a row holds "
            f"{int(lengths.max())} of {cache.capacity} slots."
        )


def _check_context(config, tokens, context, context_mask, positions, exact) -> None:
    if context is None or context_mask is None:
        raise ValueError("`context` and `context_mask` must be given together.")
    if exact:
        raise ValueError("`context` is not supported with `exact=True`.")
    if positions is None:
        raise ValueError("`context` needs `positions` (depths below context entries are unknown).")
    if not isinstance(context, CacheEntries):
        raise ValueError(f"`context` must be a CacheEntries; got {type(context).__name__}.")
    batch, num_new = jnp.shape(tokens)
    expected = (config.num_layers, batch, None, config.num_kv_heads, config.head_dim)
    _checks.check_shape("context.keys", context.keys, expected, "[L, B, E, KV, Dh]")
    _checks.check_shape("context.values", context.values, expected, "[L, B, E, KV, Dh]")
    _checks.check_bool("context_mask", context_mask)
    entries = jnp.shape(context.keys)[2]
    _checks.check_shape("context_mask", context_mask, (batch, num_new, entries), "[B, S, E]")


def _mlp(config: TransformerConfig, p: Params, h: jax.Array, exact: bool) -> jax.Array:
    act = jax.nn.silu if config.activation == "silu" else _gelu_tanh

    def dense(name: str, x: jax.Array) -> jax.Array:
        out = _dense(x, p[f"{name}_kernel"], exact)
        return out + p[f"{name}_bias"] if config.mlp_bias else out

    if config.gated_mlp:
        return dense("down", act(dense("gate", h)) * dense("up", h))
    return dense("proj", act(dense("fc", h)))


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


def apply(
    config: TransformerConfig,
    params: Params,
    tokens: jax.Array,
    cache: KVCache | None = None,
    *,
    tree_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    return_hidden: bool = False,
    exact: bool = False,
    logits_at: jax.Array | None = None,
    defer_write: bool = False,
    context: CacheEntries | None = None,
    context_mask: jax.Array | None = None,
) -> tuple[jax.Array, Any] | tuple[jax.Array, Any, jax.Array]:
    """Runs the transformer on ``S`` new tokens per row, appending them to the cache.

    Args:
      config: the model's configuration (static).
      params: parameter pytree from ``init_params`` or a checkpoint (float32 or bfloat16).
      tokens: [B, S] int, the new tokens. Row ``b`` is appended at its own length
        ``cache.lengths[b]``, so rows may hold different lengths (ragged batches).
      cache: a ``KVCache`` from ``init_cache``, or ``None`` for a cache-free forward
        pass over ``tokens`` alone (training, scoring).
      tree_mask: optional [B, S, S] bool; ``tree_mask[b, i, j]`` says new token ``i``
        attends to new token ``j`` (its ancestors and itself). Every token always
        sees the whole committed prefix (within the sliding window on sliding
        layers) and itself. Default: causal.
      positions: optional [B, S] int position ids. Default: ``length + depth``, with
        depth ``i`` for a chain and the number of ancestors under ``tree_mask``.
        Committed cache slot ``t`` is taken to hold position ``t`` (what the
        sliding window measures against).
      return_hidden: also return the residual stream after the embedding and after
        every block.
      exact: make every token's logits bitwise independent of how many tokens
        share the call (per-element reductions in a fixed order; needs a cache).
        Slower; it is what makes greedy speculative decoding provably equal to
        greedy decoding, since verification scores K + 1 tokens at once.
      logits_at: optional [B, K] int indices into the ``S`` new tokens: compute the
        logits only there (``[B, K, V]``), e.g. at each prompt's last token in a
        prefill, instead of ``[B, S, V]`` (at a 50k vocabulary most of a prefill's
        memory). Every token still goes through every block and into the cache.
      defer_write: return the new tokens' keys and values (a ``CacheEntries``,
        ``[L, B, S, KV, Dh]`` each) instead of the cache with them appended, leaving
        ``cache`` unwritten; ``cache.append`` writes them (all, or a chosen subset
        such as an accepted tree path). Inside ``lax.cond`` / ``lax.switch`` this is
        what keeps XLA from copying the whole cache in and out of the branch: write
        after the conditional. Needs a cache.
      context: optional ``CacheEntries`` ``[L, B, E, KV, Dh]``: keys and values of tokens
        that are not in the cache (e.g. a token tree's nodes scored by earlier calls,
        from ``defer_write``) which the new tokens also attend to, per ``context_mask``
        ``[B, S, E]`` bool (new token ``i`` sees context entry ``e``). Pass
        ``positions``: depths are only counted within ``tree_mask``. The caller's mask
        decides visibility alone (no sliding window is applied to context entries).
        Not with ``exact=True``.

    Returns:
      ``(logits [B, S, V] float32, cache)`` (``[B, K, V]`` with ``logits_at``), the
      cache holding the new tokens with ``lengths + S`` (with ``defer_write``:
      ``(logits, entries)``); with ``return_hidden`` also ``hidden [L + 1, B, S, D]``
      (``hidden[0]`` embeddings, ``hidden[l]`` after block ``l``, before the final
      norm; ``logits_from_hidden`` turns any of them into logits).
    """
    _check_inputs(config, tokens, cache, tree_mask, positions, defer_write)
    if logits_at is not None:
        _checks.check_integer("logits_at", logits_at)
        _checks.check_rank("logits_at", logits_at, 2, "[batch, num_positions]")
        _checks.check_shape("logits_at", logits_at, (jnp.shape(tokens)[0], None), "[B, K]")
        _checks.check_range("logits_at", logits_at, 0, jnp.shape(tokens)[1])
    if exact and cache is None:
        raise ValueError("`exact=True` needs a `cache` (it attends over the cache's fixed width).")
    if context is not None or context_mask is not None:
        _check_context(config, tokens, context, context_mask, positions, exact)
    if defer_write and cache is None:
        raise ValueError("`defer_write=True` needs a `cache` (it returns the entries to append).")
    batch, num_new = tokens.shape
    dtype = param_dtype(params)
    causal = jnp.tril(jnp.ones((num_new, num_new), bool))
    if tree_mask is None:
        new_mask = jnp.broadcast_to(causal, (batch, num_new, num_new))
        depth = jnp.broadcast_to(jnp.arange(num_new, dtype=jnp.int32), (batch, num_new))
    else:
        # A token always sees itself, so no softmax row is ever fully masked.
        new_mask = jnp.logical_or(tree_mask, jnp.eye(num_new, dtype=bool))
        depth = jnp.sum(new_mask, axis=-1, dtype=jnp.int32) - 1
    starts = jnp.zeros((batch,), jnp.int32) if cache is None else cache.lengths.astype(jnp.int32)
    if positions is None:
        positions = starts[:, None] + depth
    positions = jnp.asarray(positions, jnp.int32)

    x = params["wte"][tokens]
    if config.scale_embeddings:
        # transformers rounds the constant to the activations' dtype first.
        x = x * jnp.asarray(config.d_model**0.5, dtype)
    if config.positions == "learned":
        x = x + params["wpe"][jnp.clip(positions, 0, config.max_length - 1)]
    rope = None
    if config.positions == "rope":
        rope = _rope_tables(config, positions, exact)

    sliding = config.layer_is_sliding
    any_sliding = any(sliding)
    window = config.sliding_window
    prefix_mask = window_prefix = window_new = None
    # The masks see the cache's lengths through a barrier: a cache made in the same program
    # has lengths XLA knows to be 0, so at prefill it would fold the all-masked prefix
    # scores' max into a constant at compile time, [B, H, S, T] elements on the CPU (12 of
    # a particle filter's 16 s compile at 200 problems x 64 particles; 4 s with it).
    if cache is not None:
        committed = lax.optimization_barrier(starts)
        slot = jnp.arange(cache.capacity)[None, :]
        prefix_mask = (slot < committed[:, None])[:, None, :]  # [B, 1, T]
        if any_sliding:
            window_prefix = prefix_mask & (slot[:, None, :] > positions[:, :, None] - window)
    if any_sliding:
        window_new = new_mask & (positions[:, None, :] > positions[:, :, None] - window)
    if exact:
        # Exact attention runs over each layer's slots with the new tokens written in
        # place, in a local copy with num_new more slots (so a block fits even where the
        # cache itself has no room for it: with ``defer_write`` the caller keeps only part
        # of it). Masked slots add exact zeros to the fixed-order sums, so the result does
        # not depend on how many slots there are.
        exact_slots = cache.capacity + num_new
        slot = jnp.arange(exact_slots)[None, :]
        prefix_mask = (slot < committed[:, None])[:, None, :]  # [B, 1, T + S]
        # Slot j holds new token j - start: visible per the tree mask, or committed.
        relative = slot - starts[:, None]  # [B, T + S]
        in_block = (relative >= 0) & (relative < num_new)
        clipped = jnp.clip(relative, 0, num_new - 1)
        block_mask = jnp.take_along_axis(
            new_mask, jnp.broadcast_to(clipped[:, None], (batch, num_new, exact_slots)), axis=2
        )
        visible = prefix_mask | (in_block[:, None, :] & block_mask)
        if any_sliding:
            slot_positions = jnp.where(
                in_block, jnp.take_along_axis(positions, clipped, axis=1), slot
            )  # [B, T]
            window_visible = visible & (slot_positions[:, None, :] > positions[:, :, None] - window)

    head_dim = config.head_dim

    def project(p: Params, name: str, h: jax.Array) -> jax.Array:
        """``[B, S, D] -> [B, S, heads, Dh]``: split the projection into heads."""
        out = _dense(h, p[f"{name}_kernel"], exact)
        if config.qkv_bias:
            out = out + p[f"{name}_bias"]
        return rearrange(out, "b s (n d) -> b s n d", d=head_dim)

    def block(x, layer):
        p, is_sliding, layer_keys, layer_values, context_keys, context_values = layer
        h = norm(config, p["ln_1"], x, exact)
        a = p["attn"]
        q, k, v = project(a, "q", h), project(a, "k", h), project(a, "v", h)
        if config.qk_norm:
            q = norm(config, a["q_norm"], q, exact, kind="rms_norm")
            k = norm(config, a["k_norm"], k, exact, kind="rms_norm")
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        if exact:
            # Exact attention reads every slot of this layer, the new ones included: a
            # local write into the layer's copy (the shared cache is written after the scan).
            room = ((0, 0), (0, num_new), (0, 0), (0, 0))
            layer_keys = _write_layer(jnp.pad(layer_keys, room), k, starts)
            layer_values = _write_layer(jnp.pad(layer_values, room), v, starts)
            layer_visible = visible
            if any_sliding:
                layer_visible = jnp.where(is_sliding, window_visible, visible)
            attended = _exact_attention(config, q, layer_keys, layer_values, layer_visible)
        else:
            layer_new, layer_prefix = new_mask, prefix_mask
            if any_sliding:
                layer_new = jnp.where(is_sliding, window_new, new_mask)
                if cache is not None:
                    layer_prefix = jnp.where(is_sliding, window_prefix, prefix_mask)
            # The cache as it was before this call: the prefix mask covers committed slots
            # only, and the new tokens are attended to from k and v directly.
            layer_context = None
            if context is not None:
                layer_context = (context_keys, context_values, context_mask)
            attended = _attention(
                config, q, k, v, layer_new, layer_keys, layer_values, layer_prefix, layer_context
            )
        attended = rearrange(attended.astype(dtype), "b s h d -> b s (h d)")
        out = _dense(attended, a["out_kernel"], exact)
        if config.out_bias:
            out = out + a["out_bias"]
        if config.sandwich_norms:
            out = norm(config, p["ln_post_attn"], out, exact)
        x = x + out
        out = _mlp(config, p["mlp"], norm(config, p["ln_2"], x, exact), exact)
        if config.sandwich_norms:
            out = norm(config, p["ln_post_mlp"], out, exact)
        x = x + out
        # Per-layer outputs only when asked for: a [L, B, S, D] stack otherwise unused.
        new_entries = None if cache is None else (k, v)
        return x, (new_entries, x if return_hidden else None)

    # The cache is only read inside the scan (one layer's slots per step) and the new
    # tokens' keys and values come out of it; they are written once afterwards. A cache
    # that is read but not written can be passed into a conditional (lax.cond / switch)
    # without XLA copying it, which ``defer_write`` lets the generation loop use.
    no_cache = (None, None) if cache is None else (cache.keys, cache.values)
    no_context = (None, None) if context is None else (context.keys, context.values)
    layers = (params["layers"], jnp.asarray(sliding), *no_cache, *no_context)
    x_final, (new_entries, per_layer) = lax.scan(block, x, layers)
    if logits_at is not None:
        x_final = jnp.take_along_axis(x_final, jnp.asarray(logits_at)[..., None], axis=1)
    if exact:
        normed = norm(config, params["ln_f"], x_final, exact=True)
        logits = _dense(normed.astype(_F32), _head(config, params).astype(_F32), exact=True)
        logits = _softcap(logits, config.final_logit_softcap)
    else:
        logits = logits_from_hidden(config, params, x_final)
    new_cache = None
    if cache is not None:
        entries = CacheEntries(keys=new_entries[0], values=new_entries[1])
        new_cache = entries if defer_write else append(cache, entries)
    if return_hidden:
        hidden = jnp.concatenate([x[None], per_layer], axis=0)
        return logits, new_cache, hidden
    return logits, new_cache
