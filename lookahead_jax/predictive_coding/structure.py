"""The static part of an HGF network: node kinds, edges, update options and the update order.

A :class:`Structure` is a frozen, hashable dataclass, so it can be a static
argument of ``jax.jit`` and one compiled program serves every parameter value.
Everything that changes numbers (coupling strengths, tonic volatilities, the
initial beliefs) lives in the parameter and belief pytrees of :mod:`.core`.
"""

from __future__ import annotations

import dataclasses

CONTINUOUS = "continuous-state"
BINARY = "binary-state"
NODE_KINDS = (CONTINUOUS, BINARY)
VOLATILITY_UPDATES = ("standard", "eHGF", "unbounded")


@dataclasses.dataclass(frozen=True)
class Structure:
    """Nodes, edges and update options of a network (static: hashable, no arrays).

    Node ``k`` is described by ``kinds[k]`` and its parent lists. Edges are listed
    once, as ``(parent, child)`` pairs; the coupling strength of edge ``e`` is
    entry ``e`` of ``Params.value_coupling`` / ``Params.volatility_coupling``.
    A node without children is an *input node*; input nodes receive the columns of
    the inputs in increasing node order.
    """

    kinds: tuple[str, ...]  # [N] node kinds, CONTINUOUS or BINARY
    value_edges: tuple[tuple[int, int], ...]  # [E_v] (parent, child) value couplings
    volatility_edges: tuple[tuple[int, int], ...]  # [E_k] (parent, child) volatility couplings
    volatility_updates: str = "unbounded"
    mean_field_updates: bool = False
    max_posterior_precision: float = 1e10
    precision_clipping_value: float = 1e-6  # binary expected means are kept in [eps, 1 - eps]

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_nodes(self) -> int:
        return len(self.kinds)

    def value_parents(self, node: int) -> tuple[tuple[int, int], ...]:
        """``(edge index, parent)`` of each value parent of ``node``, in edge order."""
        return tuple((e, p) for e, (p, c) in enumerate(self.value_edges) if c == node)

    def value_children(self, node: int) -> tuple[tuple[int, int], ...]:
        return tuple((e, c) for e, (p, c) in enumerate(self.value_edges) if p == node)

    def volatility_parents(self, node: int) -> tuple[tuple[int, int], ...]:
        return tuple((e, p) for e, (p, c) in enumerate(self.volatility_edges) if c == node)

    def volatility_children(self, node: int) -> tuple[tuple[int, int], ...]:
        return tuple((e, c) for e, (p, c) in enumerate(self.volatility_edges) if p == node)

    @property
    def input_nodes(self) -> tuple[int, ...]:
        """Nodes without children, in increasing order (one input column each)."""
        return tuple(
            k
            for k in range(self.num_nodes)
            if not self.value_children(k) and not self.volatility_children(k)
        )

    @property
    def update_order(self) -> tuple[int, ...]:
        """Nodes ordered children before parents (the bottom-up pass).

        Ties are broken by node index, so a chain built in pyhgf's usual way
        (input first, then its parents) updates in index order.
        """
        return _topological_order(self)

    @property
    def prediction_order(self) -> tuple[int, ...]:
        """Parents before children (the top-down pass): the reverse of the update order."""
        return tuple(reversed(self.update_order))


def _parents(structure: Structure, node: int) -> set[int]:
    return {p for p, c in structure.value_edges + structure.volatility_edges if c == node}


def _topological_order(structure: Structure) -> tuple[int, ...]:
    """Children first; raises ``ValueError`` naming a cycle if there is one."""
    n = structure.num_nodes
    children = {k: set() for k in range(n)}
    for p, c in structure.value_edges + structure.volatility_edges:
        children[p].add(c)
    done: list[int] = []
    placed: set[int] = set()
    remaining = set(range(n))
    while remaining:
        # A node is ready when all of its children are placed.
        ready = sorted(k for k in remaining if children[k] <= placed)
        if not ready:
            raise ValueError(
                "the network's edges must not form a cycle; nodes "
                f"{sorted(remaining)} are on or above a cycle."
            )
        for k in ready:
            done.append(k)
            placed.add(k)
            remaining.discard(k)
    return tuple(done)


def validate(structure: Structure) -> None:
    """Raises ``ValueError`` for unknown kinds or options, bad edges and cycles."""
    for k, kind in enumerate(structure.kinds):
        if kind not in NODE_KINDS:
            raise ValueError(f"node {k}: `kind` must be one of {NODE_KINDS}; got {kind!r}.")
    if structure.volatility_updates not in VOLATILITY_UPDATES:
        raise ValueError(
            f"`volatility_updates` must be one of {VOLATILITY_UPDATES}; "
            f"got {structure.volatility_updates!r}."
        )
    n = structure.num_nodes
    for name, edges in (
        ("value", structure.value_edges),
        ("volatility", structure.volatility_edges),
    ):
        seen = set()
        for p, c in edges:
            for role, k in (("parent", p), ("child", c)):
                if not isinstance(k, int) or not 0 <= k < n:
                    raise ValueError(
                        f"a {name} edge ({p} -> {c}) names {role} {k!r}, but the network "
                        f"has nodes 0..{n - 1}."
                    )
            if p == c:
                raise ValueError(f"a {name} edge must join two nodes; got {p} -> {c}.")
            if (p, c) in seen:
                raise ValueError(f"the {name} edge {p} -> {c} is given twice.")
            seen.add((p, c))
    for p, c in structure.value_edges + structure.volatility_edges:
        if structure.kinds[p] == BINARY:
            raise ValueError(
                f"node {p} is a {BINARY} node; it can only be a child (an input), "
                f"but it is a parent of node {c}."
            )
    for p, c in structure.volatility_edges:
        if structure.kinds[c] == BINARY:
            raise ValueError(
                f"node {c} is a {BINARY} node; it can only have value parents, "
                f"but node {p} is its volatility parent."
            )
    for k, kind in enumerate(structure.kinds):
        # Zero is allowed while a network is being built; `run` requires exactly one.
        if kind == BINARY and len(structure.value_parents(k)) > 1:
            raise ValueError(
                f"{BINARY} node {k} takes one value parent; got {len(structure.value_parents(k))}."
            )
    if n == 0:
        raise ValueError("a network needs at least one node; got none.")
    _topological_order(structure)


def check_complete(structure: Structure) -> None:
    """Raises ``ValueError`` if the network cannot be filtered (a binary node without parent)."""
    for k, kind in enumerate(structure.kinds):
        if kind == BINARY and not structure.value_parents(k):
            raise ValueError(
                f"{BINARY} node {k} needs a value parent (a continuous-state node) "
                "to predict it; add one with `value_children` or `value_parents`."
            )
