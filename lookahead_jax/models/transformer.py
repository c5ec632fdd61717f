"""The reference decoder-only transformer (GPT-2 architecture) as pure functions.

Parameters are a plain dict of arrays; the blocks' parameters are stacked on a
leading layer axis so that the forward pass is one ``lax.scan`` (fast to
compile) and the first ``l`` layers are a slice (early-exit drafting)::

    {"wte": [V, D], "wpe": [P, D],
     "layers": {"ln_1": {"scale": [L, D], "bias": [L, D]},
                "attn": {"qkv_kernel": [L, D, 3D], "qkv_bias": [L, 3D],
                         "out_kernel": [L, D, D], "out_bias": [L, D]},
                "ln_2": {"scale": [L, D], "bias": [L, D]},
                "mlp": {"fc_kernel": [L, D, F], "fc_bias": [L, F],
                        "proj_kernel": [L, F, D], "proj_bias": [L, D]}},
     "ln_f": {"scale": [D], "bias": [D]}}

Kernels are ``[in, out]`` like GPT-2's ``Conv1D`` weights; the output head is
tied to ``wte``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks
from lookahead_jax.models.cache import KVCache
from lookahead_jax.models.config import TransformerConfig

Params = dict[str, Any]


def init_params(config: TransformerConfig, key: jax.Array) -> Params:
    """GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2L)."""
    d, f, n = config.d_model, config.hidden_dim, config.num_layers
    keys = jax.random.split(key, 6)
    std = 0.02
    residual_std = std / (2 * n) ** 0.5

    def normal(k: jax.Array, shape: tuple[int, ...], scale: float) -> jax.Array:
        return scale * jax.random.normal(k, shape, jnp.float32)

    def layer_norm(*lead: int) -> dict[str, jax.Array]:
        return {"scale": jnp.ones((*lead, d)), "bias": jnp.zeros((*lead, d))}

    return {
        "wte": normal(keys[0], (config.vocab_size, d), std),
        "wpe": normal(keys[1], (config.max_length, d), 0.01),
        "layers": {
            "ln_1": layer_norm(n),
            "attn": {
                "qkv_kernel": normal(keys[2], (n, d, 3 * d), std),
                "qkv_bias": jnp.zeros((n, 3 * d)),
                "out_kernel": normal(keys[3], (n, d, d), residual_std),
                "out_bias": jnp.zeros((n, d)),
            },
            "ln_2": layer_norm(n),
            "mlp": {
                "fc_kernel": normal(keys[4], (n, d, f), std),
                "fc_bias": jnp.zeros((n, f)),
                "proj_kernel": normal(keys[5], (n, f, d), residual_std),
                "proj_bias": jnp.zeros((n, d)),
            },
        },
        "ln_f": layer_norm(),
    }


def param_shapes(config: TransformerConfig) -> Params:
    """The shape of every parameter, as a pytree of ``jax.ShapeDtypeStruct``."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def layer_norm(
    params: dict[str, jax.Array], x: jax.Array, eps: float, exact: bool = False
) -> jax.Array:
    if exact:
        size = x.shape[-1]
        mean = (tree_sum(x, axis=-1) / size)[..., None]
        var = (tree_sum(jnp.square(x - mean), axis=-1) / size)[..., None]
        # XLA's vectorised rsqrt differs from its scalar path; sqrt and divide are exact.
        return (x - mean) / jnp.sqrt(var + eps) * params["scale"] + params["bias"]
    else:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * params["scale"] + params["bias"]


def final_norm(config: TransformerConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """The final LayerNorm applied to residual-stream states ``[..., D]``."""
    return layer_norm(params["ln_f"], hidden, config.layer_norm_eps)


def logits_from_hidden(config: TransformerConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """Final LayerNorm then the tied output head: ``[..., D] -> [..., V]``.

    Applied to ``hidden[l]`` from ``apply(..., return_hidden=True)`` it gives the
    logits of an early exit after ``l`` blocks.
    """
    return final_norm(config, params, hidden) @ params["wte"].T


def _attention(
    config: TransformerConfig,
    q: jax.Array,  # [B, S, H, Dh]
    k_new: jax.Array,  # [B, S, H, Dh]
    v_new: jax.Array,  # [B, S, H, Dh]
    new_mask: jax.Array,  # [B, S, S] bool: query i sees new token j
    k_prefix: jax.Array | None,  # [B, T, H, Dh] cache before this call
    v_prefix: jax.Array | None,
    prefix_mask: jax.Array | None,  # [B, T] bool: slot is committed
) -> jax.Array:
    scale = config.head_dim**-0.5
    neg = jnp.finfo(q.dtype).min
    scores = jnp.einsum("bihd,bjhd->bhij", q, k_new) * scale
    scores = jnp.where(new_mask[:, None], scores, neg)
    if k_prefix is None:
        return jnp.einsum("bhij,bjhd->bihd", jax.nn.softmax(scores, axis=-1), v_new)
    # One softmax over prefix and new keys, without concatenating the cache
    # (a concatenation would copy this layer's whole cache at every call).
    prefix_scores = jnp.einsum("bihd,bthd->bhit", q, k_prefix) * scale
    prefix_scores = jnp.where(prefix_mask[:, None, None, :], prefix_scores, neg)
    top = jnp.maximum(jnp.max(scores, -1, keepdims=True), jnp.max(prefix_scores, -1, keepdims=True))
    new_weights = jnp.exp(scores - top)
    prefix_weights = jnp.exp(prefix_scores - top)
    total = jnp.sum(new_weights, -1) + jnp.sum(prefix_weights, -1)  # [B, H, S]
    attended = jnp.einsum("bhij,bjhd->bihd", new_weights, v_new) + jnp.einsum(
        "bhit,bthd->bihd", prefix_weights, v_prefix
    )
    return attended / jnp.swapaxes(total, 1, 2)[..., None]


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


def _dense(x: jax.Array, kernel: jax.Array, exact: bool) -> jax.Array:
    """``x @ kernel``; with ``exact``, products summed by ``tree_sum`` (shape-independent)."""
    if not exact:
        return x @ kernel
    return tree_sum(x[..., :, None] * kernel, axis=-2)


def _exact_attention(
    config: TransformerConfig,
    q: jax.Array,  # [B, S, H, Dh]
    keys: jax.Array,  # [B, T, H, Dh] cache after this call's write
    values: jax.Array,  # [B, T, H, Dh]
    visible: jax.Array,  # [B, S, T] bool
) -> jax.Array:
    """Attention over the whole cache with width-independent reductions (see ``_dense``)."""
    scale = config.head_dim**-0.5
    scores = tree_sum(q[:, :, None] * keys[:, None], axis=-1) * scale  # [B, S, T, H]
    scores = jnp.where(visible[..., None], scores, -jnp.inf)
    weights = jnp.exp(scores - tree_max(scores, axis=2)[:, :, None])
    weights = weights / tree_sum(weights, axis=2)[:, :, None]
    return tree_sum(weights[..., None] * values[:, None], axis=2)  # [B, S, H, Dh]


def _write(buffer: jax.Array, layer: jax.Array, update: jax.Array, starts: jax.Array) -> jax.Array:
    """Writes ``update [B, S, H, Dh]`` into ``buffer [L, B, T, H, Dh]`` at ``layer``, ``starts[b]``.

    Slots past the end are dropped (``cache.overflowed`` reports it) rather than
    clamped, so an overflow can never overwrite committed entries.
    """
    num_new = update.shape[1]
    slots = starts[:, None] + jnp.arange(num_new, dtype=starts.dtype)[None, :]
    rows = jnp.arange(buffer.shape[1])[:, None]
    return buffer.at[layer, rows, slots].set(update, mode="drop")


def _check_inputs(
    config: TransformerConfig,
    tokens: Any,
    cache: KVCache | None,
    tree_mask: Any,
    positions: Any,
) -> None:
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
    expected = (config.num_layers, batch, None, config.num_heads, config.head_dim)
    _checks.check_shape("cache.keys", cache.keys, expected, "[L, B, T, H, Dh] matching config")
    _checks.check_shape("cache.values", cache.values, expected, "[L, B, T, H, Dh] matching config")
    _checks.check_shape("cache.lengths", cache.lengths, (batch,), "one length per row")
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
) -> tuple[jax.Array, KVCache | None] | tuple[jax.Array, KVCache | None, jax.Array]:
    """Runs the transformer on ``S`` new tokens per row, appending them to the cache.

    Args:
      config: the model's configuration (static).
      params: parameter pytree from ``init_params`` or a checkpoint.
      tokens: [B, S] int, the new tokens. Row ``b`` is appended at its own length
        ``cache.lengths[b]``, so rows may hold different lengths (ragged batches).
      cache: a ``KVCache`` from ``init_cache``, or ``None`` for a cache-free forward
        pass over ``tokens`` alone (training, scoring).
      tree_mask: optional [B, S, S] bool; ``tree_mask[b, i, j]`` says new token ``i``
        attends to new token ``j`` (its ancestors and itself). Every token always
        sees the whole committed prefix and itself. Default: causal.
      positions: optional [B, S] int position ids. Default: ``length + depth``, with
        depth ``i`` for a chain and the number of ancestors under ``tree_mask``.
      return_hidden: also return the residual stream after the embedding and after
        every block.
      exact: make every token's logits bitwise independent of how many tokens
        share the call (per-element reductions in a fixed order; needs a cache).
        Slower; it is what makes greedy speculative decoding provably equal to
        greedy decoding, since verification scores K + 1 tokens at once.

    Returns:
      ``(logits [B, S, V], cache)``, the cache holding the new tokens with
      ``lengths + S``; with ``return_hidden`` also ``hidden [L + 1, B, S, D]``
      (``hidden[0]`` embeddings, ``hidden[l]`` after block ``l``, before the final
      LayerNorm; ``logits_from_hidden`` turns any of them into logits).
    """
    _check_inputs(config, tokens, cache, tree_mask, positions)
    if exact and cache is None:
        raise ValueError("`exact=True` needs a `cache` (it attends over the cache's fixed width).")
    batch, num_new = tokens.shape
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
    positions = jnp.clip(positions, 0, config.max_length - 1)

    x = params["wte"][tokens] + params["wpe"][positions]
    eps = config.layer_norm_eps
    heads, head_dim = config.num_heads, config.head_dim
    prefix_mask = None
    if cache is not None:
        prefix_mask = jnp.arange(cache.capacity)[None, :] < starts[:, None]
    if exact:
        # Slot j holds new token j - start: visible per the tree mask, or committed.
        relative = jnp.arange(cache.capacity)[None, :] - starts[:, None]  # [B, T]
        in_block = (relative >= 0) & (relative < num_new)
        block_mask = jnp.take_along_axis(
            new_mask,
            jnp.broadcast_to(
                jnp.clip(relative, 0, num_new - 1)[:, None], (batch, num_new, cache.capacity)
            ),
            axis=2,
        )
        visible = prefix_mask[:, None, :] | (in_block[:, None, :] & block_mask)

    def block(carry, layer):
        x, keys, values = carry
        p, index = layer
        h = layer_norm(p["ln_1"], x, eps, exact)
        qkv = _dense(h, p["attn"]["qkv_kernel"], exact) + p["attn"]["qkv_bias"]
        q, k, v = jnp.split(qkv.reshape(batch, num_new, 3 * heads, head_dim), 3, axis=2)
        layer_keys = layer_values = None
        if keys is not None:
            # Write first, in place into the carried cache, then read this layer's
            # slots: the prefix mask hides the new slots from the fast path.
            keys, values = _write(keys, index, k, starts), _write(values, index, v, starts)
            layer_keys = lax.dynamic_index_in_dim(keys, index, keepdims=False)
            layer_values = lax.dynamic_index_in_dim(values, index, keepdims=False)
        if exact:
            attended = _exact_attention(config, q, layer_keys, layer_values, visible)
        else:
            attended = _attention(config, q, k, v, new_mask, layer_keys, layer_values, prefix_mask)
        attended = attended.reshape(batch, num_new, heads * head_dim)
        x = x + _dense(attended, p["attn"]["out_kernel"], exact) + p["attn"]["out_bias"]
        h = layer_norm(p["ln_2"], x, eps, exact)
        h = _dense(h, p["mlp"]["fc_kernel"], exact) + p["mlp"]["fc_bias"]
        h = jax.nn.gelu(h, approximate=True)
        x = x + _dense(h, p["mlp"]["proj_kernel"], exact) + p["mlp"]["proj_bias"]
        return (x, keys, values), x

    # The cache rides in the scan carry so that XLA updates it in place; as a
    # scanned input/output it would be copied whole at every call.
    init = (x, None, None) if cache is None else (x, cache.keys, cache.values)
    layers = (params["layers"], jnp.arange(config.num_layers))
    (x_final, new_keys, new_values), per_layer = lax.scan(block, init, layers)
    if exact:
        normed = layer_norm(params["ln_f"], x_final, config.layer_norm_eps, exact=True)
        logits = _dense(normed, params["wte"].T, exact=True)
    else:
        logits = logits_from_hidden(config, params, x_final)
    new_cache = None
    if cache is not None:
        new_cache = KVCache(new_keys, new_values, cache.lengths + num_new)
    if return_hidden:
        hidden = jnp.concatenate([x[None], per_layer], axis=0)
        return logits, new_cache, hidden
    return logits, new_cache
