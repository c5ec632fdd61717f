"""``Model``: a config and its parameters as one pytree, callable like ``apply``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from lookahead_jax.models.cache import KVCache
from lookahead_jax.models.config import TransformerConfig
from lookahead_jax.models.transformer import Params, apply, param_dtype


@struct.dataclass
class Model:
    """A transformer bundled with its parameters.

    ``config`` is static (part of the pytree structure) and ``params`` are the
    leaves, so a ``Model`` can be passed straight through ``jax.jit``, ``vmap``
    and sharding, and drafting or decoding code can take "any model" as one value.
    A ``flax.struct`` dataclass: the library's one kind of pytree with a static field
    next to arrays (states, infos and parameters are NamedTuples; docs/design.md).
    """

    config: TransformerConfig = struct.field(pytree_node=False)
    params: Params  # pytree of arrays, layout in transformer.py

    @property
    def dtype(self) -> jnp.dtype:
        """The parameters' (and by default the KV cache's) dtype."""
        return param_dtype(self.params)

    def __call__(self, tokens: jax.Array, cache: KVCache | None = None, **kwargs):
        """``apply(self.config, self.params, tokens, cache, **kwargs)``."""
        return apply(self.config, self.params, tokens, cache, **kwargs)
