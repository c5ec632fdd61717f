"""Configuration of the one decoder: GPT-2, Llama/Mistral, Qwen2/2.5, Qwen3 and Gemma 2 by switches.

Every family is the same pre-norm decoder; the fields below switch its pieces
(norm, positions, attention grouping and biases, MLP gating, Gemma's extras).
``gpt2()``, ``llama()``, ``qwen2()``, ``qwen3()``, ``gemma2()`` and ``mistral()``
set the switches of each family; ``load_hf`` builds the config from a
checkpoint's ``config.json``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2")
NORMS = ("layer_norm", "rms_norm", "rms_norm_plus_one")
POSITIONS = ("learned", "rope")
ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATIONS = ("gelu_tanh", "silu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of the decoder. Frozen and hashable: pass it as a static argument.

    The defaults are a small GPT-2 (the shipped byte-level models' family).

    Attributes:
      vocab_size: number of token ids (256 for the shipped byte-level models).
      num_layers: number of transformer blocks.
      num_heads: query heads per block.
      d_model: width of the residual stream (``hidden_size``).
      max_length: number of positions: learned positions (GPT-2) or the longest
        sequence a cache may hold (``max_position_embeddings``).
      mlp_dim: hidden width of the MLP (``intermediate_size``); ``None`` means ``4 * d_model``.
      layer_norm_eps: epsilon of every norm (``layer_norm_epsilon`` / ``rms_norm_eps``).
      model_type: the HuggingFace family the weights come from and are saved as
        (one of ``MODEL_TYPES``); the numerics are set by the switches below.
      num_kv_heads: key/value heads (grouped-query attention); ``None`` = ``num_heads``.
      head_dim: width of one head; ``None`` = ``d_model // num_heads`` (Qwen3 and
        Gemma 2 set it explicitly, and it may differ). Always an int after construction.
      norm: ``layer_norm`` (GPT-2, with bias), ``rms_norm`` (Llama: ``x / rms * w``),
        ``rms_norm_plus_one`` (Gemma: ``x / rms * (1 + w)``).
      positions: ``learned`` (GPT-2's ``wpe``) or ``rope`` (rotary, rotate-half convention).
      rope_theta: base of the rotary frequencies.
      rope_type: ``default``, ``linear`` (frequencies divided by ``rope_factor``) or
        ``llama3`` (Llama 3.1/3.2's banded scaling).
      rope_factor, rope_low_freq_factor, rope_high_freq_factor, rope_original_max_length:
        the scaling's parameters (``factor``, ``low_freq_factor``, ``high_freq_factor``,
        ``original_max_position_embeddings``).
      activation: ``gelu_tanh`` or ``silu``.
      gated_mlp: ``down(act(gate(x)) * up(x))`` (SwiGLU / GeGLU) instead of GPT-2's
        ``proj(act(fc(x)))``.
      qkv_bias, out_bias, mlp_bias: biases on the q/k/v projections, the attention
        output projection and the MLP projections.
      qk_norm: per-head RMSNorm of q and k before rotary positions (Qwen3).
      tie_embeddings: the output head is the token embedding transposed; otherwise
        ``params["lm_head"]`` ``[D, V]``.
      scale_embeddings: multiply embeddings by ``sqrt(d_model)`` (Gemma).
      sandwich_norms: norms after attention and after the MLP too (Gemma 2).
      query_pre_attn_scalar: scores are scaled by ``query_pre_attn_scalar ** -0.5``;
        ``None`` = ``head_dim`` (the usual ``1 / sqrt(head_dim)``).
      attn_logit_softcap: ``s = cap * tanh(s / cap)`` on attention scores before the mask.
      final_logit_softcap: the same on the output logits.
      sliding_window: a token at position ``p`` on a sliding layer sees positions
        ``p - sliding_window < j <= p``; ``None`` = no window.
      sliding_layers: which layers use the window (a tuple of ``num_layers`` bools);
        ``None`` with a window = every layer (Mistral v0.1).
    """

    vocab_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    d_model: int = 256
    max_length: int = 512
    mlp_dim: int | None = None
    layer_norm_eps: float = 1e-5
    model_type: str = "gpt2"
    num_kv_heads: int | None = None
    head_dim: int | None = None
    norm: str = "layer_norm"
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_length: int | None = None
    activation: str = "gelu_tanh"
    gated_mlp: bool = False
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    qk_norm: bool = False
    tie_embeddings: bool = True
    scale_embeddings: bool = False
    sandwich_norms: bool = False
    query_pre_attn_scalar: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_layers", "num_heads", "d_model", "max_length"):
            _positive_int(name, getattr(self, name))
        for name in ("mlp_dim", "num_kv_heads", "head_dim", "sliding_window"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)
        _one_of("model_type", self.model_type, MODEL_TYPES)
        _one_of("norm", self.norm, NORMS)
        _one_of("positions", self.positions, POSITIONS)
        _one_of("rope_type", self.rope_type, ROPE_TYPES)
        _one_of("activation", self.activation, ACTIVATIONS)
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(
                    f"`num_heads` must divide `d_model` when `head_dim` is not given; got "
                    f"d_model={self.d_model}, num_heads={self.num_heads}."
                )
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"`num_kv_heads` must divide `num_heads` (grouped-query attention); got "
                f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}."
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even `head_dim`; got {self.head_dim}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0; got {self.layer_norm_eps!r}.")
        for name in ("rope_theta", "rope_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0; got {getattr(self, name)!r}.")
        if self.rope_type == "llama3":
            if self.rope_original_max_length is None:
                raise ValueError(
                    "`rope_original_max_length` (original_max_position_embeddings) is needed "
                    "for rope_type 'llama3'; got None."
                )
            if not self.rope_high_freq_factor > self.rope_low_freq_factor > 0:
                raise ValueError(
                    "rope_type 'llama3' needs high_freq_factor > low_freq_factor > 0; got "
                    f"{self.rope_high_freq_factor!r} and {self.rope_low_freq_factor!r}."
                )
        for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"`{name}` must be > 0 or None; got {value!r}.")
        if self.sliding_layers is not None:
            layers = tuple(bool(v) for v in self.sliding_layers)
            if len(layers) != self.num_layers:
                raise ValueError(
                    f"`sliding_layers` must hold one bool per layer ({self.num_layers}); got "
                    f"{len(layers)}."
                )
            object.__setattr__(self, "sliding_layers", layers)

    @property
    def hidden_dim(self) -> int:
        """Width of the MLP's hidden layer."""
        return 4 * self.d_model if self.mlp_dim is None else self.mlp_dim

    @property
    def layer_is_sliding(self) -> tuple[bool, ...]:
        """One bool per layer: does it attend within ``sliding_window`` only?"""
        if self.sliding_window is None:
            return (False,) * self.num_layers
        if self.sliding_layers is None:
            return (True,) * self.num_layers
        return self.sliding_layers

    @property
    def attention_scale(self) -> float:
        base = self.head_dim if self.query_pre_attn_scalar is None else self.query_pre_attn_scalar
        return float(base) ** -0.5

    def truncated(self, num_layers: int) -> TransformerConfig:
        """The same model cut after its first ``num_layers`` blocks (early exit)."""
        sliding = None if self.sliding_layers is None else self.sliding_layers[:num_layers]
        return dataclasses.replace(self, num_layers=num_layers, sliding_layers=sliding)

    def num_params(self) -> int:
        """Number of parameters."""
        d, f, n, v = self.d_model, self.hidden_dim, self.num_layers, self.vocab_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        norm = 2 * d if self.norm == "layer_norm" else d
        per_layer = d * q + 2 * d * kv + q * d
        per_layer += (q + 2 * kv) * self.qkv_bias + d * self.out_bias
        if self.gated_mlp:
            per_layer += 3 * d * f + (2 * f + d) * self.mlp_bias
        else:
            per_layer += 2 * d * f + (f + d) * self.mlp_bias
        per_layer += norm * (4 if self.sandwich_norms else 2)
        per_layer += 2 * self.head_dim * self.qk_norm
        total = v * d + n * per_layer + norm
        total += self.max_length * d * (self.positions == "learned")
        total += d * v * (not self.tie_embeddings)
        return total


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")


def gpt2(**fields: Any) -> TransformerConfig:
    """A GPT-2 config (the defaults): LayerNorm, learned positions, GELU MLP, tied head."""
    return TransformerConfig(**{"model_type": "gpt2", **fields})


def llama(**fields: Any) -> TransformerConfig:
    """A Llama config: RMSNorm, RoPE, GQA, SwiGLU, no biases; untied head by default."""
    base = dict(
        model_type="llama",
        norm="rms_norm",
        positions="rope",
        activation="silu",
        gated_mlp=True,
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_embeddings=False,
        layer_norm_eps=1e-5,
    )
    return TransformerConfig(**{**base, **fields})


def mistral(**fields: Any) -> TransformerConfig:
    """A Mistral config: Llama's numerics, optionally a sliding window on every layer."""
    return llama(**{"model_type": "mistral", **fields})


def qwen2(**fields: Any) -> TransformerConfig:
    """A Qwen2/2.5 config: Llama plus biases on q, k and v; rope_theta 1e6."""
    base = dict(model_type="qwen2", qkv_bias=True, rope_theta=1e6, layer_norm_eps=1e-6)
    return llama(**{**base, **fields})


def qwen3(**fields: Any) -> TransformerConfig:
    """A Qwen3 config: Llama plus per-head RMSNorm of q and k; rope_theta 1e6."""
    base = dict(model_type="qwen3", qk_norm=True, rope_theta=1e6, layer_norm_eps=1e-6)
    return llama(**{**base, **fields})


def gemma2(**fields: Any) -> TransformerConfig:
    """A Gemma 2 config: (1 + w) RMSNorm, sandwich norms, GeGLU, soft-capping, tied head,
    embeddings scaled by sqrt(d_model), a sliding window on even layers (0, 2, ...)."""
    num_layers = fields.get("num_layers", TransformerConfig.num_layers)
    base = dict(
        model_type="gemma2",
        norm="rms_norm_plus_one",
        positions="rope",
        activation="gelu_tanh",
        gated_mlp=True,
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_embeddings=True,
        scale_embeddings=True,
        sandwich_norms=True,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        sliding_window=4096,
        sliding_layers=tuple(i % 2 == 0 for i in range(num_layers)),
        layer_norm_eps=1e-6,
    )
    return TransformerConfig(**{**base, **fields})


FAMILIES = {
    "gpt2": gpt2,
    "llama": llama,
    "mistral": mistral,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma2": gemma2,
}
