"""A preallocated key/value cache whose rows may hold different lengths.

Row ``b`` holds ``lengths[b]`` committed tokens in slots ``[0, lengths[b])``;
slots at or beyond the length are stale and never attended to. Rewinding is
therefore just lowering ``lengths``; keeping an accepted tree path moves the
path's entries into contiguous slots.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax import _checks
from lookahead_jax.models.config import TransformerConfig


class KVCache(NamedTuple):
    """Keys and values of every layer, with one committed length per row."""

    keys: jax.Array  # [L, B, T, KV, Dh] float (the parameters' dtype by default)
    values: jax.Array  # [L, B, T, KV, Dh] float
    lengths: jax.Array  # [B] int32, committed tokens per row (<= T)

    @property
    def capacity(self) -> int:
        """Number of slots ``T`` per row."""
        return self.keys.shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]


class CacheEntries(NamedTuple):
    """Keys and values of new tokens, not yet in a cache (``apply(..., defer_write=True)``)."""

    keys: jax.Array  # [L, B, S, KV, Dh] float, new token s of row b at layer l
    values: jax.Array  # [L, B, S, KV, Dh] float


def append(
    cache: KVCache,
    entries: CacheEntries,
    keep: jax.Array | None = None,
    count: jax.Array | None = None,
) -> KVCache:
    """Writes new tokens' entries after each row's committed length.

    Row ``b`` gets ``entries[:, b, keep[b, i]]`` at slot ``cache.lengths[b] + i`` for
    ``i < count[b]``, and its length grows by ``count[b]``. Slots past the capacity are
    dropped (``overflowed`` reports it), never clamped onto committed entries.

    Args:
      cache: the cache to write into (in place under ``jit`` when it is not used again).
      entries: ``[L, B, S, KV, Dh]`` keys and values, e.g. from ``apply(...,
        defer_write=True)``.
      keep: optional [B, P] int indices into the ``S`` entries, in the order to write
        them (e.g. an accepted tree path, root first); default ``arange(S)``.
      count: optional [B] int in [0, P]: how many of ``keep`` each row writes;
        default all ``P``.
    Returns:
      The cache with ``lengths + count``.
    """
    batch = cache.batch_size
    num_new = entries.keys.shape[2]
    rows = jnp.arange(batch)[:, None]
    if keep is None:
        keys, values = entries.keys, entries.values  # [L, B, P = S, KV, Dh]
        num_kept = num_new
    else:
        _checks.check_integer("keep", keep)
        _checks.check_shape("keep", keep, (batch, None), "[batch, num_kept]")
        keep = jnp.clip(jnp.asarray(keep, jnp.int32), 0, num_new - 1)
        keys, values = entries.keys[:, rows, keep], entries.values[:, rows, keep]
        num_kept = keep.shape[1]
    if count is None:
        count = jnp.full((batch,), num_kept, jnp.int32)
    else:
        _checks.check_integer("count", count)
        _checks.check_shape("count", count, (batch,), "one count per row")
        _checks.check_range("count", count, 0, num_kept + 1)
        count = jnp.asarray(count, jnp.int32)
    slots = cache.lengths[:, None] + jnp.arange(num_kept, dtype=jnp.int32)[None, :]
    # Entries past the count are sent past the end so that the scatter drops them.
    slots = jnp.where(jnp.arange(num_kept)[None, :] < count[:, None], slots, cache.capacity)
    return KVCache(
        keys=cache.keys.at[:, rows, slots].set(keys.astype(cache.keys.dtype), mode="drop"),
        values=cache.values.at[:, rows, slots].set(values.astype(cache.values.dtype), mode="drop"),
        lengths=cache.lengths + count,
    )


def init_cache(
    config: TransformerConfig,
    batch_size: int,
    max_length: int | None = None,
    dtype: jnp.dtype | None = None,
    *,
    extra_slots: int = 0,
) -> KVCache:
    """An empty cache of ``max_length + extra_slots`` slots per row.

    Args:
      config: the model's configuration.
      batch_size: B.
      max_length: slots for tokens at distinct positions (default ``config.max_length``).
      dtype: of keys and values; ``None`` = float32. Pass the parameters' dtype
        (``Model.dtype``) to keep a bfloat16 model's cache in bfloat16.
      extra_slots: slots beyond ``config.max_length`` for speculative blocks: the
        nodes of a token tree occupy one slot each but share positions, so a
        tree of N nodes needs more slots than positions.
    """
    max_length = config.max_length if max_length is None else max_length
    if not isinstance(extra_slots, int) or extra_slots < 0:
        raise ValueError(f"`extra_slots` must be an int >= 0; got {extra_slots!r}.")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
    if not isinstance(max_length, int) or not 0 < max_length <= config.max_length:
        raise ValueError(
            f"`max_length` must be an int in [1, config.max_length={config.max_length}] "
            f"(positions beyond the model's learned positions do not exist); got {max_length!r}."
        )
    shape = (
        config.num_layers,
        batch_size,
        max_length + extra_slots,
        config.num_kv_heads,
        config.head_dim,
    )
    dtype = jnp.float32 if dtype is None else dtype
    return KVCache(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        lengths=jnp.zeros((batch_size,), jnp.int32),
    )


def rewind(cache: KVCache, lengths: jax.Array) -> KVCache:
    """Sets each row's committed length to ``lengths [B]`` (entries past it become stale).

    Rewinding only forgets tokens: ``lengths`` larger than the current length
    are clipped to it, since those slots hold nothing valid.
    """
    _checks.check_integer("lengths", lengths)
    _checks.check_shape("lengths", lengths, (cache.batch_size,), "one length per row")
    _checks.check_range("lengths", lengths, 0, cache.capacity + 1)
    lengths = jnp.minimum(jnp.asarray(lengths, jnp.int32), cache.lengths)
    return cache._replace(lengths=lengths)


def keep_path(
    cache: KVCache, tree_start: jax.Array, path: jax.Array, path_lengths: jax.Array
) -> KVCache:
    """Keeps only an accepted root-to-leaf path of a token tree appended to the cache.

    After ``apply`` appended an S-node tree to row ``b`` at slots
    ``tree_start[b] + [0, S)``, node ``path[b, i]`` (for ``i < path_lengths[b]``) is
    moved to slot ``tree_start[b] + i`` and the row's length becomes
    ``tree_start[b] + path_lengths[b]``.

    Args:
      cache: the cache after the tree was appended.
      tree_start: [B] int, each row's length before the tree was appended.
      path: [B, P] int, tree-node indices of the accepted path, root first.
      path_lengths: [B] int, number of valid entries of ``path`` per row (0..P).
    Returns:
      The cache holding the committed prefix followed by the accepted path.
    """
    batch = cache.batch_size
    _checks.check_integer("tree_start", tree_start)
    _checks.check_shape("tree_start", tree_start, (batch,), "one start per row")
    _checks.check_integer("path", path)
    _checks.check_rank("path", path, 2, "[batch, path_length]")
    _checks.check_shape("path", path, (batch, None), "[batch, path_length]")
    _checks.check_integer("path_lengths", path_lengths)
    _checks.check_shape("path_lengths", path_lengths, (batch,), "one path length per row")
    num_path = path.shape[1]
    _checks.check_range("path_lengths", path_lengths, 0, num_path + 1)

    tree_start = jnp.asarray(tree_start, jnp.int32)
    source = tree_start[:, None] + jnp.asarray(path, jnp.int32)  # [B, P]
    target = tree_start[:, None] + jnp.arange(num_path, dtype=jnp.int32)  # [B, P]
    valid = jnp.arange(num_path)[None, :] < path_lengths[:, None]
    # Invalid entries are sent past the end so that the scatter drops them.
    target = jnp.where(valid, target, cache.capacity)
    rows = jnp.arange(batch)[:, None]

    def move(buffer: jax.Array) -> jax.Array:  # [L, B, T, KV, Dh]
        gathered = buffer[:, rows, jnp.clip(source, 0, cache.capacity - 1)]  # [L, B, P, KV, Dh]
        return buffer.at[:, rows, target].set(gathered, mode="drop")

    return KVCache(
        keys=move(cache.keys),
        values=move(cache.values),
        lengths=tree_start + jnp.asarray(path_lengths, jnp.int32),
    )


def overflowed(cache: KVCache) -> jax.Array:
    """[B] bool: rows whose appended tokens did not all fit (their writes were dropped)."""
    return cache.lengths > cache.capacity
