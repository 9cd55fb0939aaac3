"""The particle axis split over devices: how a run follows the sharding of its start.

The particles interact only through f_ρ(x_p) = Σ_i w_i σ(x_p; θ_i), a sum over the
particle axis, so a drift evaluation on particles split over devices needs one
all-reduce of the P-vector f_ρ per data chunk and nothing else (docs/design.md §2). XLA's
partitioner inserts exactly that when the state is constrained to its ``NamedSharding``
at every drift and jump evaluation (tests/test_sharding.py counts the all-reduces in the
compiled step). The data stays replicated (or chunked, as on one device).

A run is sharded when its start is: ``shard_particles`` places an (N, D) start with
``NamedSharding(mesh, P("particles", None))``; the driver constrains every state to that
sharding and returns the final particles with it. A start on one device (or a sharding
over one device) takes the single-device path unchanged.

Meshes with ``Explicit`` axes (``jax.make_mesh``'s default) are solved on the same devices
with the axes ``Auto``: diffrax's loop carries arrays built without a sharding
(``jnp.zeros(shape)``), which explicit sharding-in-types rejects as a carry whose type
changes; the partitioner then places them. The particles come back with the start's
explicit sharding.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["shard_particles", "particle_sharding", "run_sharding"]

PARTICLE_AXIS = "particles"


def shard_particles(particles, mesh: Mesh | None = None, axis: str = PARTICLE_AXIS):
    """The particles (N, D) (or (R, N, D): replicates stay whole) split along N over the
    mesh axis ``axis``, as ``NamedSharding(mesh, P(axis, None))``.

    ``mesh`` defaults to all visible devices on one axis named ``axis``
    (``jax.make_mesh((jax.device_count(),), (axis,))``), across processes too after
    ``jax.distributed.initialize``: then every process passes the same global array (a
    start from the same key), and keeps the rows on its own devices. N must divide by the
    number of devices on ``axis``.

    Example:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> theta = mfsde.shard_particles(jnp.zeros((8, 3)))
        >>> theta.shape
        (8, 3)
    """
    particles = np.asarray(particles) if not isinstance(particles, jax.Array) else particles
    if particles.ndim not in (2, 3):
        raise ValueError(f"particles must have shape (N, D) or (R, N, D), got {particles.shape}")
    mesh = jax.make_mesh((jax.device_count(),), (axis,)) if mesh is None else mesh
    return jax.device_put(particles, with_leading(_split_over(mesh, particles.shape[-2], axis), particles.ndim))


def _split_over(mesh: Mesh, n: int, axis: str) -> NamedSharding:
    """``NamedSharding(mesh, P(axis, None))`` for N particles, after checking the mesh has
    the axis and N divides by its size."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(f"the mesh has no axis {axis!r} to split the particles over; its axes are {mesh.axis_names}")
    if n % mesh.shape[axis]:
        raise ValueError(f"{n} particles do not split evenly over the {mesh.shape[axis]} devices of mesh axis "
                         f"{axis!r}; take N a multiple of {mesh.shape[axis]}")
    return NamedSharding(mesh, PartitionSpec(axis, None))


def _padded_spec(sharding: NamedSharding, ndim: int) -> tuple:
    return tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))


def particle_sharding(y) -> NamedSharding | None:
    """The ``NamedSharding`` of a start state whose particle axis (−2) is split over more
    than one device; None for anything else (one device, a tracer, a replicated state).

    Only the particle axis may be split: replicates (R, N, D) and columns stay whole."""
    if isinstance(y, jax.core.Tracer) or not isinstance(y, jax.Array):
        return None
    sharding = y.sharding
    if not isinstance(sharding, NamedSharding) or sharding.num_devices == 1:
        return None
    spec = _padded_spec(sharding, y.ndim)
    if spec[-2] is None:
        return None
    if any(s is not None for i, s in enumerate(spec) if i != y.ndim - 2):
        raise ValueError(f"a sharded run splits the particle axis only (axis {y.ndim - 2} of shape {y.shape}); "
                         f"got the partition spec {sharding.spec}: use mfsde.shard_particles")
    return sharding


def solving_sharding(sharding: NamedSharding) -> NamedSharding:
    """The sharding a run is solved with: the same devices and spec, its mesh axes ``Auto``
    (the module docstring says why)."""
    mesh = sharding.mesh
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return sharding
    auto = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    return NamedSharding(auto, sharding.spec)


def onto_solving_mesh(tree, solving: NamedSharding):
    """Every array of ``tree`` (a key, the data inside a drift) placed on an explicit-axes
    mesh moved to the solving mesh's ``Auto`` twin, same devices and spec: a jitted
    function rejects inputs on two meshes. Other leaves are left alone."""
    def move(a):
        s = getattr(a, "sharding", None) if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) else None
        if isinstance(s, NamedSharding) and s.mesh != solving.mesh and any(
                t == AxisType.Explicit for t in s.mesh.axis_types):
            return jax.device_put(a, solving_sharding(s))
        return a

    return jax.tree.map(move, tree)


def solving_context(sharding: NamedSharding):
    """The mesh context a sharded run is traced in, overriding an explicit mesh set by the
    caller."""
    return jax.set_mesh(sharding.mesh)


class Constrained(eqx.Module):
    """fn(...) with its state argument (at ``position``: 1 for a drift ``(t, Θ, args)``, 2
    for a jump ``(key, t, Θ)``) and its result held to the per-run particle sharding
    (``with_sharding_constraint``; under a replicate vmap the replicate axis stays whole)."""

    fn: Callable
    sharding: NamedSharding = eqx.field(static=True)
    position: int = eqx.field(static=True, default=1)

    def __call__(self, *args):
        args = list(args)
        args[self.position] = self.constrain(args[self.position])
        return self.constrain(self.fn(*args))

    def constrain(self, y):
        return jax.lax.with_sharding_constraint(y, self.sharding)


def hold_particle_axis(y):
    """``y`` (N, ...) held split along N over the mesh axis "particles" of the mesh a
    sharded run is traced under (``solving_context``); unchanged otherwise. For steps whose
    later gather (a clone's copy) would otherwise make XLA gather the state first and
    compute every particle's drift on every device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or PARTICLE_AXIS not in mesh.axis_names:
        return y
    return jax.lax.with_sharding_constraint(y, PartitionSpec(PARTICLE_AXIS, *([None] * (y.ndim - 1))))


def run_sharding(mesh: Mesh | None, particles, axis: str = PARTICLE_AXIS) -> NamedSharding | None:
    """The per-run (N, ·) state sharding of a family's run: ``P(axis, None)`` on ``mesh``
    when one is given (N must divide by its size on ``axis``), else the start's own
    (``particle_sharding``), else None (one device)."""
    if mesh is None:
        found = particle_sharding(particles)
        if found is None:
            return None
        return NamedSharding(found.mesh, PartitionSpec(_padded_spec(found, jax.numpy.ndim(particles))[-2], None))
    sharding = _split_over(mesh, jax.numpy.shape(particles)[-2], axis)
    return None if mesh.size == 1 else sharding


def with_leading(sharding: NamedSharding, ndim: int) -> NamedSharding:
    """The (N, ·) state sharding extended to an array of ``ndim`` dimensions (replicates
    (R, N, ·) whole)."""
    return NamedSharding(sharding.mesh, PartitionSpec(*([None] * (ndim - 2)), *sharding.spec))


_COLLECTIVE = re.compile(r"= (\([^=]*?\)|\S+) (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)"
                         r"(?:-start)?\(")


def hlo_collectives(hlo: str) -> list[list]:
    """[op, element count, computation] of every collective in compiled HLO text
    (``jit(f).lower(...).compile().as_text()``): what the partitioner inserted. A combined
    collective over a tuple (XLA merges neighbours) counts once per element."""
    found, computation = [], None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            computation = "ENTRY" if line.startswith("ENTRY") else line.split(" ")[0]
        m = _COLLECTIVE.search(line)
        if m:
            for dims in re.findall(r"\w+\[([\d,]*)\]", m.group(1)):
                found.append([m.group(2), int(np.prod([int(d) for d in dims.split(",") if d])), computation])
    return found
