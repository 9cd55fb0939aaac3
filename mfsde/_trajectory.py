"""What every dynamics family returns: the ``Trajectory`` of a particle run, and its ``Run``.

A floor of its own, below the samplers and the diagnostics that read it (``sample_fixed_point``
starts from one, ``to_inference_data`` converts one), so that neither imports the dynamics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, Float

__all__ = ["Run", "Trajectory"]


class Run(eqx.Module):
    """How a trajectory was made: the static part of its compiled program.

    family: the family's name (``"langevin"``, ``"sgd"``, ``"wfr"``, ``"mckean_vlasov"``,
    ``"schrodinger_bridge"``, a new family's own; ``""`` for a bare ``drive``).
    solver: the diffrax solver, None for a chain of jumps alone (SGD). controller: the step
    controller's name; fixed_step: whether the steps are the uniform grid of ``dt0``.
    t0, t1, dt0: the time grid (dt0 the first step of an adaptive or ``StepTo`` grid).
    jump_every: steps between jumps (None without jumps). checkpoint_every: steps per
    checkpoint segment (None: not checkpointed). diagnostics_every: in-run diagnostics at
    every k-th save counted back from the last, 0 at none. options: the family's own
    settings as its typed NamedTuple (``SGDOptions``, ``WFROptions``...; a new family
    its own), None for none. starts,
    start_dispersion: how replicate runs started (``"shared"`` or ``"per-replicate"`` and
    ``start_dispersion``; None for one run). sharding, devices: the particle axis's
    partition. continuation: ``(fe, key, particles, t0, t1, dt0) -> Trajectory``, the same
    run from ``particles`` on another grid (what ``check_fixed_point`` halves dt0 with);
    None for a family that does not offer one.
    """

    family: str = ""
    solver: object = None
    controller: str = "ConstantStepSize"
    fixed_step: bool = True
    t0: float = 0.0
    t1: float = 0.0
    dt0: float = math.nan
    jump_every: int | None = None
    checkpoint_every: int | None = None
    diagnostics_every: int = 0
    options: tuple | None = None
    starts: str | None = None
    start_dispersion: float | None = None
    sharding: str | None = None
    devices: int | None = None
    continuation: Callable | None = None

    def __check_init__(self):
        if self.options is not None and not hasattr(self.options, "_asdict"):
            raise TypeError(f"Run.options must be a NamedTuple of the family's settings (or None), got "
                            f"{type(self.options).__name__}")

    def replace(self, **changes) -> "Run":
        return dataclasses.replace(self, **changes)

    def option(self, name: str, default=None):
        """The family's setting ``name`` (a field of ``options``), ``default`` if it has none."""
        return getattr(self.options, name, default)

    def option_values(self) -> dict[str, object]:
        """The family's settings as name -> value, values that are not a number, a string,
        a bool or None written as their ``repr`` (what a fingerprint and a NetCDF
        attribute hold)."""
        plain = (str, int, float, bool, type(None))
        items = {} if self.options is None else self.options._asdict()
        return {k: v if isinstance(v, plain) else repr(v) for k, v in items.items()}

    def fingerprint(self) -> dict[str, object]:
        """What of the run identifies its checkpoint besides the data and the grid: the
        family and its settings."""
        return {"family": self.family} | self.option_values()

    def constants(self) -> dict[str, object]:
        """The run as flat name -> value pairs (None fields left out): what
        ``to_inference_data`` stores in ``constant_data``."""
        out = {"family": self.family, "solver": "jumps" if self.solver is None else type(self.solver).__name__,
               "controller": self.controller, "t0": self.t0, "t1": self.t1, "dt0": self.dt0,
               "diagnostics_every": self.diagnostics_every}
        for name in ("jump_every", "checkpoint_every", "starts", "start_dispersion", "sharding", "devices"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out | self.option_values()


class Trajectory(eqx.Module):
    """A solved particle dynamics.

    ts: save times, shape (T,). particles: the final state, shape (N, D) (or (R, N, D) for
    R replicate runs). observables: name -> values at ``ts``, shape (T,) (or (R, T)).
    num_steps: solver steps taken. run: how it was made (``Run``: family, grid, solver,
    options; static). diverged_at: the time the state first became non-finite (the run
    stopped there), inf if it never did; shape () (or (R,)). Outside jit a diverged run
    raises ``DivergenceError`` instead; under an outer jit or vmap this field is the report.
    """

    ts: Float[Array, " t"]
    particles: Float[Array, "n d"]
    observables: dict[str, Float[Array, " t"]]
    num_steps: Array
    run: Run = eqx.field(static=True, default=Run())
    diverged_at: Array | float = float("inf")

    def _replace(self, **changes) -> "Trajectory":
        return dataclasses.replace(self, **changes)
