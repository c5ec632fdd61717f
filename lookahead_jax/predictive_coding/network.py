"""A builder in pyhgf's vocabulary that compiles to the pure core.

    net = (
        Network(volatility_updates="standard")
        .add_nodes(precision=1e4)                          # node 0: the input
        .add_nodes(value_children=0, mean=1.04)            # node 1
        .add_nodes(volatility_children=1)                  # node 2
    )
    net.input_data(series)                                 # series: [T] or [T, n_inputs]
    net.node_trajectories[1]["mean"]                       # [T]

The builder is a small mutable Python object (``add_nodes`` returns ``self`` so
calls chain, as in pyhgf). Everything numerical happens in the pure core
(:func:`lookahead_jax.predictive_coding.run` and ``step``, functions of
``(structure, params, beliefs, inputs)``); :meth:`Network.compile` hands those
out, so the same network can be ``jit``-ed, ``vmap``-ed over subjects,
differentiated and sharded without the builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax.predictive_coding import core
from lookahead_jax.predictive_coding.structure import BINARY, CONTINUOUS, NODE_KINDS, Structure

BELIEF_FIELDS = ("mean", "precision", "expected_mean", "expected_precision")
PARAM_FIELDS = ("tonic_volatility", "tonic_drift", "autoconnection_strength")
_NODE_FIELDS = BELIEF_FIELDS + PARAM_FIELDS

# jit once per (structure, robust): the structure is hashable and static.
_filter_jit = jax.jit(core.filter_series, static_argnums=(0,), static_argnames=("robust",))
MIN_BUCKET = 128


def length_bucket(length: int) -> int:
    """The padded length used by ``input_data(..., bucket=True)``: the next power of
    two, at least 128 (so a new series length recompiles only when it crosses one)."""
    return max(MIN_BUCKET, 1 << max(0, int(length) - 1).bit_length())


def _edge_list(name: str, value: Any) -> list[tuple[int, float]]:
    """pyhgf's edge forms: an int, a list of ints, or ``(indices, strengths)``."""
    if value is None:
        return []
    if isinstance(value, int | np.integer):
        return [(int(value), 1.0)]
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], Sequence)
        and isinstance(value[1], Sequence)
    ):
        indices, strengths = value
        if len(indices) != len(strengths):
            raise ValueError(
                f"`{name}` as (indices, strengths) needs one strength per index; got "
                f"{len(indices)} indices and {len(strengths)} strengths."
            )
        return [(int(i), float(s)) for i, s in zip(indices, strengths, strict=True)]
    if isinstance(value, Sequence) and all(isinstance(i, int | np.integer) for i in value):
        return [(int(i), 1.0) for i in value]
    raise ValueError(
        f"`{name}` must be an int, a list of ints or a tuple (indices, strengths); got {value!r}."
    )


class Network:
    """An HGF network built node by node, in pyhgf's vocabulary.

    Args:
      volatility_updates: ``"unbounded"`` (pyhgf's default), ``"eHGF"`` or ``"standard"``.
      mean_field_updates: ``False`` (default, pyhgf's "relaxed" updates) or ``True``.
      max_posterior_precision: cap on every posterior precision (pyhgf: 1e10).
      precision_clipping_value: binary expected means are kept in ``[eps, 1 - eps]``.
    """

    def __init__(
        self,
        volatility_updates: str = "unbounded",
        mean_field_updates: bool = False,
        max_posterior_precision: float = 1e10,
        precision_clipping_value: float = 1e-6,
    ) -> None:
        self.volatility_updates = volatility_updates
        self.mean_field_updates = bool(mean_field_updates)
        self.max_posterior_precision = float(max_posterior_precision)
        self.precision_clipping_value = float(precision_clipping_value)
        # Validate the options now, on an empty-but-valid structure of one node.
        Structure((CONTINUOUS,), (), (), volatility_updates, self.mean_field_updates)
        self.kinds: list[str] = []
        self.node_parameters: list[dict[str, float]] = []
        self.value_edges: list[tuple[int, int, float]] = []  # (parent, child, strength)
        self.volatility_edges: list[tuple[int, int, float]] = []
        self._node_trajectories: dict[int, dict[str, Any]] | None = None
        self._time_steps: Any = None
        self._compiled: dict[Any, tuple[Structure, core.Params, core.Beliefs]] = {}
        self.trajectories: core.Trajectories | None = None  # the core's output, [T, N] fields
        self.final_beliefs: core.Beliefs | None = None

    @property
    def n_nodes(self) -> int:
        return len(self.kinds)

    def add_nodes(
        self,
        kind: str = "continuous-state",
        n_nodes: int = 1,
        node_parameters: dict[str, float] | None = None,
        value_children: Any = None,
        value_parents: Any = None,
        volatility_children: Any = None,
        volatility_parents: Any = None,
        **additional_parameters: float,
    ) -> Network:
        """Adds ``n_nodes`` nodes of ``kind`` with the given edges; returns ``self``.

        Edges name existing nodes: an int, a list of ints, or ``(indices, strengths)``
        for coupling strengths other than 1. Parameters (``mean``, ``precision``,
        ``expected_mean``, ``expected_precision``, ``tonic_volatility``,
        ``tonic_drift``, ``autoconnection_strength``) come in ``node_parameters`` or
        as keyword arguments (which win).

        Raises:
          ValueError: unknown ``kind`` or parameter, an edge to a node that does not
            exist, or an edge that would make a cycle.
        """
        if kind not in NODE_KINDS:
            raise ValueError(f"`kind` must be one of {NODE_KINDS}; got {kind!r}.")
        if not isinstance(n_nodes, int) or n_nodes < 1:
            raise ValueError(f"`n_nodes` must be a positive int; got {n_nodes!r}.")
        if "coupling_fn" in additional_parameters:
            raise ValueError(
                "`coupling_fn` (non-linear value coupling) is not supported; couplings "
                "are linear, alpha * parent, as in pyhgf's default."
            )
        params = {**(node_parameters or {}), **additional_parameters}
        unknown = sorted(set(params) - set(_NODE_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown node parameter(s) {unknown}; expected some of {list(_NODE_FIELDS)}."
            )
        edges = {
            "value_children": _edge_list("value_children", value_children),
            "value_parents": _edge_list("value_parents", value_parents),
            "volatility_children": _edge_list("volatility_children", volatility_children),
            "volatility_parents": _edge_list("volatility_parents", volatility_parents),
        }
        for name, pairs in edges.items():
            for other, _ in pairs:
                if not 0 <= other < self.n_nodes:
                    raise ValueError(
                        f"`{name}` names node {other}, but the network has nodes "
                        f"0..{self.n_nodes - 1}; add a node before linking to it."
                    )
        new_value, new_volatility = list(self.value_edges), list(self.volatility_edges)
        for i in range(n_nodes):
            k = self.n_nodes + i
            new_value += [(k, c, s) for c, s in edges["value_children"]]
            new_value += [(p, k, s) for p, s in edges["value_parents"]]
            new_volatility += [(k, c, s) for c, s in edges["volatility_children"]]
            new_volatility += [(p, k, s) for p, s in edges["volatility_parents"]]
        kinds = self.kinds + [kind] * n_nodes
        # Build the structure now so bad edges (cycles, binary parents) fail here.
        self._structure(kinds, new_value, new_volatility)
        self.kinds = kinds
        self.node_parameters += [dict(params) for _ in range(n_nodes)]
        self.value_edges, self.volatility_edges = new_value, new_volatility
        self._compiled.clear()  # the network changed
        return self

    def _structure(self, kinds, value_edges, volatility_edges) -> Structure:
        return Structure(
            kinds=tuple(kinds),
            value_edges=tuple((p, c) for p, c, _ in value_edges),
            volatility_edges=tuple((p, c) for p, c, _ in volatility_edges),
            volatility_updates=self.volatility_updates,
            mean_field_updates=self.mean_field_updates,
            max_posterior_precision=self.max_posterior_precision,
            precision_clipping_value=self.precision_clipping_value,
        )

    @property
    def structure(self) -> Structure:
        if not self.kinds:
            raise ValueError("the network has no nodes; call `add_nodes` first.")
        return self._structure(self.kinds, self.value_edges, self.volatility_edges)

    @property
    def input_idxs(self) -> tuple[int, ...]:
        """The input nodes (no children), in the order of the input columns."""
        return self.structure.input_nodes

    def compile(self, dtype: Any = None) -> tuple[Structure, core.Params, core.Beliefs]:
        """The static structure and the parameter and initial-belief pytrees.

        Args:
          dtype: float dtype of the arrays (default: JAX's default float, float32
            unless x64 is enabled).
        """
        dtype = jnp.dtype(dtype or jnp.result_type(float))
        # Cached per dtype until the next `add_nodes` (saves ~1 ms per `input_data`).
        if dtype not in self._compiled:
            self._compiled[dtype] = self._compile(dtype)
        return self._compiled[dtype]

    def _compile(self, dtype: Any) -> tuple[Structure, core.Params, core.Beliefs]:
        structure = self.structure
        params = core.default_params(structure, dtype)
        beliefs = core.default_beliefs(structure, dtype)
        inputs = set(structure.input_nodes)
        p = {f: np.array(getattr(params, f)) for f in PARAM_FIELDS}
        b = {f: np.array(getattr(beliefs, f)) for f in BELIEF_FIELDS}
        for k, values in enumerate(self.node_parameters):
            for field, value in values.items():
                if field in BELIEF_FIELDS:
                    b[field][k] = value
                elif k not in inputs:  # an input node's volatility, drift and lambda are 0
                    p[field][k] = value
        params = core.Params(
            **{f: jnp.asarray(v, dtype) for f, v in p.items()},
            value_coupling=jnp.asarray([s for _, _, s in self.value_edges], dtype),
            volatility_coupling=jnp.asarray([s for _, _, s in self.volatility_edges], dtype),
        )
        return structure, params, core.Beliefs(**{f: jnp.asarray(v, dtype) for f, v in b.items()})

    def input_data(
        self,
        input_data: Any,
        observed: Any = None,
        time_steps: Any = None,
        *,
        robust: bool = False,
        bucket: bool = False,
    ) -> Network:
        """Filters a series and stores ``node_trajectories``; returns ``self``.

        Args:
          input_data: ``[T]`` (one input node) or ``[T, n_inputs]`` observations.
          observed: ``[T]`` or ``[T, n_inputs]`` mask, 0 for a missing observation.
          time_steps: ``[T]`` time elapsed since the previous observation (default 1).
          robust: see :func:`~.core.run`.
          bucket: pad the series to :func:`length_bucket` (padding steps change
            nothing, see ``length`` in :func:`~.core.run`), so that series of new
            lengths reuse the compiled program; results are those of the unpadded run.
        Raises:
          ValueError: wrong shapes, or bad values (a time step that is not finite and
            > 0, a binary input other than 0/1, a non-finite observed value outside
            robust mode), checked here before the compiled run.
        """
        structure, params, beliefs = self.compile()
        inputs = jnp.asarray(input_data)
        n_in = len(structure.input_nodes)
        if inputs.ndim == 1 and n_in == 1:
            inputs = inputs[:, None]
        if observed is not None:
            observed = jnp.asarray(observed)
            if observed.ndim == 1 and n_in == 1:
                observed = observed[:, None]
        t = inputs.shape[0]
        # Check before the compiled run (where value checks are off) and before padding,
        # so that errors name the caller's arrays.
        core._check_inputs(structure, params, beliefs, inputs, observed, time_steps)
        core.check_values(structure, inputs, observed, time_steps, robust=robust)
        if bucket:
            pad = length_bucket(t) - t
            inputs = jnp.pad(inputs, ((0, pad), (0, 0)))
            observed = jnp.ones((t, n_in), bool) if observed is None else observed
            observed = jnp.pad(observed, ((0, pad), (0, 0)))  # padding rows: unobserved
            time_steps = jnp.pad(
                jnp.ones(t) if time_steps is None else jnp.asarray(time_steps),
                (0, pad),
                constant_values=1.0,
            )
            final, trajectories = _filter_jit(
                structure,
                params,
                beliefs,
                inputs,
                observed,
                time_steps,
                length=jnp.asarray(t, jnp.int32),  # an array: a new length is no new key
                robust=robust,
            )
            trajectories = jax.tree.map(lambda x: x[:t], trajectories)
            time_steps = time_steps[:t]
        else:
            final, trajectories = _filter_jit(
                structure, params, beliefs, inputs, observed, time_steps, robust=robust
            )
        self.final_beliefs = final
        self.trajectories = trajectories
        self._node_trajectories = None  # built on first access
        self._time_steps = time_steps
        return self

    @property
    def node_trajectories(self) -> dict[int, dict[str, Any]] | None:
        """``{node: {field: [T] array}}`` of the last ``input_data`` run (pyhgf's layout),
        built on first access; ``None`` before any run."""
        if self._node_trajectories is None and self.trajectories is not None:
            t = self.trajectories.beliefs.mean.shape[0]
            self._node_trajectories = trajectories_by_node(self.trajectories, self._time_steps, t)
        return self._node_trajectories

    def plot_trajectories(self, **kwargs: Any):
        """Plots the last ``input_data`` run; see :func:`~.plots.plot_trajectories`."""
        from lookahead_jax.predictive_coding import plots

        if self.trajectories is None:
            raise ValueError("no trajectories yet; call `input_data` first.")
        return plots.plot_trajectories(self.structure, self.trajectories, **kwargs)


def trajectories_by_node(
    trajectories: core.Trajectories, time_steps: Any = None, length: int | None = None
) -> dict[int, dict[str, Any]]:
    """``{node: {field: [T] array}}`` in pyhgf's layout (``temp`` holds the diagnostics).

    The arrays are NumPy views of one host copy per field (slicing JAX arrays node
    by node would cost one dispatch each).
    """
    beliefs = {f: np.asarray(getattr(trajectories.beliefs, f)) for f in BELIEF_FIELDS}
    info = {f: np.asarray(getattr(trajectories.info, f)) for f in core.HGFInfo._fields}
    n = beliefs["mean"].shape[-1]
    out: dict[int, dict[str, Any]] = {}
    for k in range(n):
        fields = {f: v[..., k] for f, v in beliefs.items()}
        temp = {f: v[..., k] for f, v in info.items() if f != "observed"}
        out[k] = {**fields, **temp, "observed": info["observed"][..., k], "temp": temp}
    t = length if length is not None else beliefs["mean"].shape[0]
    out[-1] = {"time_step": np.ones(t) if time_steps is None else np.asarray(time_steps)}
    return out


__all__ = ["BINARY", "Network", "trajectories_by_node"]
