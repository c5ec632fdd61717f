"""Where particle arrays live on a device mesh; shared by the bootstrap filter and islands.

Particle leaves are split along their leading (particle) axis; the N log-weights are
kept replicated so that resampling runs the 1-device operations bit for bit (see
``particles/sharded.py`` for why).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from lookahead_jax import sharding as _sharding


def check_divisible(num_particles: int, mesh: Mesh) -> None:
    size = mesh.devices.size
    if num_particles % size:
        raise ValueError(
            f"`num_particles` ({num_particles}) must be divisible by the {size} devices of `mesh`."
        )


def constrain(tree: Any, mesh: Mesh) -> Any:
    """Inside ``jit``: keeps every leaf of ``tree`` split along its leading (particle) axis."""
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, _sharding.axis_sharding(mesh, x.ndim, 0)),
        tree,
    )


def replicated(tree: Any, mesh: Mesh) -> Any:
    """Inside ``jit``: every device holds all of ``tree`` (used for the N log-weights)."""
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, _sharding.axis_sharding(mesh, x.ndim, None)),
        tree,
    )
