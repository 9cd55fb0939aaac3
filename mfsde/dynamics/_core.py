"""The particle-SDE core shared by every mean-field dynamics: diffrax terms over (N, D).

A mean-field SDE here is dΘ = b(t, Θ) dt + g(t) dB on the whole (N, D) particle array,
with isotropic additive noise of scale g(t) (or none: an ODE). ``solve`` turns it into
diffrax terms (``MultiTerm(ODETerm, ControlTerm)`` with a lineax diagonal operator), picks
the Brownian path, saves only observables (``SaveAt(fn=...)``) plus the final state, shows
a ``TqdmProgressMeter`` on long runs and sets ``max_steps`` from t1/dt0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["ParticleSDE", "Trajectory", "solve"]

# Runs of at least this many steps show a progress bar unless progress=False.
_PROGRESS_MIN_STEPS = 5000
# Adaptive (ODE) solves may take this many times the steps t1/dt0 suggests.
_ADAPTIVE_STEP_FACTOR = 64


class Trajectory(NamedTuple):
    """A solved particle dynamics.

    ts: save times, shape (T,). particles: the final state, shape (N, D).
    observables: name -> values at ``ts``, each shape (T,). num_steps: solver steps taken.
    """

    ts: Float[Array, " t"]
    particles: Float[Array, "n d"]
    observables: dict[str, Float[Array, " t"]]
    num_steps: Array


class ParticleSDE(eqx.Module):
    """dΘ = drift(t, Θ) dt + noise_scale(t) dB over an (N, D) particle array.

    ``drift(t, Θ, args) -> (N, D)``; ``noise_scale(t) -> scalar`` or ``None`` for an ODE.
    Both should be equinox Modules (or other stable callables) so that repeated solves
    reuse the compiled program.
    """

    drift: Callable
    noise_scale: Callable | None = None


class _IsotropicDiffusion(eqx.Module):
    noise_scale: Callable

    def __call__(self, t, y, args):
        return lx.DiagonalLinearOperator(jnp.full(y.shape, self.noise_scale(t), y.dtype))


def _levy_area(solver) -> type:
    # The cheapest Brownian information the solver accepts (ShARK etc. need Lévy area).
    minimal = getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement)
    for cls in (diffrax.BrownianIncrement, diffrax.SpaceTimeLevyArea, diffrax.SpaceTimeTimeLevyArea):
        if issubclass(cls, minimal):
            return cls
    raise ValueError(f"solver {type(solver).__name__} needs Levy area {minimal}, not supported")


def num_fixed_steps(t0: float, t1: float, dt0: float) -> int:
    """Number of fixed steps of size dt0 that cover [t0, t1] (the last may be shorter)."""
    return max(1, math.ceil((t1 - t0) / dt0 - 1e-9))


def solve(
    sde: ParticleSDE,
    key: PRNGKeyArray,
    y0: Float[Array, "n d"],
    *,
    t0: float,
    t1: float,
    dt0: float,
    solver: diffrax.AbstractSolver,
    observables: Callable,
    ts: Array | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    progress: bool | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int | None = None,
) -> Trajectory:
    """Solve a particle SDE with diffrax, saving ``observables(t, Θ, args) -> dict`` at ``ts``.

    Fixed steps (no controller, or ``ConstantStepSize``) draw Brownian increments with
    ``UnsafeBrownianPath`` (one normal draw per step, no tree) and solve with
    ``ForwardMode``, a plain while loop without checkpoints: this is what keeps a diffrax
    step as cheap as a hand-written ``lax.scan`` Euler–Maruyama step (bench/langevin.py).
    Adaptive controllers get a ``VirtualBrownianTree`` (tolerance dt0/100) when there is
    noise. ``ts`` defaults to up to 101 equally spaced times in [t0, t1].
    """
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
        raise ValueError(f"need finite t0 < t1, got t0={t0}, t1={t1}")
    if not (math.isfinite(dt0) and dt0 > 0):
        raise ValueError(f"dt0 must be a positive number, got {dt0}")
    n_steps = num_fixed_steps(t0, t1, dt0)
    if stepsize_controller is None:
        stepsize_controller = diffrax.ConstantStepSize()
    fixed = isinstance(stepsize_controller, diffrax.ConstantStepSize)
    if ts is None:
        ts = jnp.linspace(t0, t1, min(101, n_steps + 1))
    ts = jnp.asarray(ts, dtype=y0.dtype)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"ts must be a non-empty 1-D array of times, got shape {ts.shape}")

    drift = diffrax.ODETerm(sde.drift)
    if sde.noise_scale is None:
        terms = drift
    else:
        shape = jax.ShapeDtypeStruct(y0.shape, y0.dtype)
        levy = _levy_area(solver)
        if fixed:
            bm = diffrax.UnsafeBrownianPath(shape=shape, key=key, levy_area=levy)
        else:
            bm = diffrax.VirtualBrownianTree(t0, t1, tol=dt0 / 100, shape=shape, key=key, levy_area=levy)
        terms = diffrax.MultiTerm(drift, diffrax.ControlTerm(_IsotropicDiffusion(sde.noise_scale), bm))

    if progress is None:
        progress = n_steps >= _PROGRESS_MIN_STEPS
    meter = (
        diffrax.TqdmProgressMeter(refresh_steps=max(1, n_steps // 100))
        if progress
        else diffrax.NoProgressMeter()
    )
    if max_steps is None:
        max_steps = n_steps + 1 if fixed else _ADAPTIVE_STEP_FACTOR * n_steps
    saveat = diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts, fn=observables), diffrax.SubSaveAt(t1=True)])
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        dt0,
        y0,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        adjoint=diffrax.ForwardMode() if adjoint is None else adjoint,
        max_steps=max_steps,
        progress_meter=meter,
    )
    obs, y1 = sol.ys
    return Trajectory(ts=sol.ts[0], particles=y1[-1], observables=obs, num_steps=sol.stats["num_steps"])
