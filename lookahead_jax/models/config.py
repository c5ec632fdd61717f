"""Configuration of the reference decoder-only transformer (GPT-2 architecture)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of a GPT-2 style decoder. Frozen and hashable: pass it as a static argument.

    Attributes:
      vocab_size: number of token ids (256 for the shipped byte-level models).
      num_layers: number of transformer blocks (GPT-2 ``n_layer``).
      num_heads: attention heads per block (``n_head``); must divide ``d_model``.
      d_model: width of the residual stream (``n_embd``).
      max_length: number of learned positions (``n_positions``): no sequence or
        cache may be longer.
      mlp_dim: hidden width of the MLP (``n_inner``); ``None`` means ``4 * d_model``.
      layer_norm_eps: epsilon of every LayerNorm (``layer_norm_epsilon``).
    """

    vocab_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    d_model: int = 256
    max_length: int = 512
    mlp_dim: int | None = None
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_layers", "num_heads", "d_model", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"`num_heads` must divide `d_model`; got d_model={self.d_model}, "
                f"num_heads={self.num_heads}."
            )
        if self.mlp_dim is not None and (not isinstance(self.mlp_dim, int) or self.mlp_dim <= 0):
            raise ValueError(f"`mlp_dim` must be a positive int or None; got {self.mlp_dim!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0; got {self.layer_norm_eps!r}.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """Width of the MLP's hidden layer."""
        return 4 * self.d_model if self.mlp_dim is None else self.mlp_dim

    def num_params(self) -> int:
        """Number of parameters (the output head is tied to the token embedding)."""
        d, f, n = self.d_model, self.hidden_dim, self.num_layers
        per_layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        return self.vocab_size * d + self.max_length * d + n * per_layer + 2 * d
