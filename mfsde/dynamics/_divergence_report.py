"""What a diverged run reports: ``DivergenceError``, with the step, what went non-finite first
and why, from the last finite state the engine kept."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import equinox as eqx
from collections.abc import Callable
from jaxtyping import Array

from .._trajectory import Trajectory
from ._engine import one_step

__all__ = ["DivergenceError", "Replay", "raise_if_diverged"]


class DivergenceError(FloatingPointError):
    """A run's state became non-finite: ``time``, ``step`` where it first did, ``replicate``
    (which run, for a batch of keys; None for one run), ``quantity`` (what was non-finite
    first: ``"drift"``, ``"noise"``, or ``"step"`` when both were finite at the last finite
    state and the update itself overflowed, an unstable step; ``"jump"`` for a chain of
    jumps alone such as SGD), ``columns`` (the state's column groups that went non-finite,
    e.g. ``("theta",)``) and the partial ``trajectory``: the saves before ``time``, its
    ``particles`` the last finite state (of the diverged replicate)."""

    def __init__(self, message: str, time: float, step: int, trajectory: "Trajectory", replicate: int | None = None,
                 quantity: str = "step", columns: tuple[str, ...] = ()):
        super().__init__(message)
        self.time, self.step, self.trajectory, self.replicate = time, step, trajectory, replicate
        self.quantity, self.columns = quantity, columns


class Replay(eqx.Module):
    """What reports a diverged fixed-step run: its terms, solver, keys, Θ_0, the grid."""

    sde_of: Callable
    solver: object
    key: Array
    args: Array
    batched: bool = eqx.field(static=True)
    grid: object
    diverged_step: Array


def raise_if_diverged(traj: Trajectory, replay: Replay | None, t0: float, dt0: float, hint, columns=None,
                       kept: str = "") -> None:
    """``DivergenceError`` if the (concrete) trajectory stopped at a non-finite state.

    The engine stopped at the last finite state Θ_last (the trajectory's particles); the
    bad step is taken once more from it (``one_step``: the same draws) to see which columns
    went non-finite, and the drift and noise are evaluated at Θ_last to say which went
    non-finite first; ``hint(Θ_last)`` says how the step compares with the drift's curvature.
    """
    at = traj.diverged_at
    if isinstance(at, jax.core.Tracer):
        return
    at = np.atleast_1d(np.asarray(at, np.float64))
    if np.all(np.isinf(at)):
        return
    r = int(np.argmin(at))
    t = float(at[r])
    step = int(round((t - t0) / dt0))
    keep = np.asarray(traj.ts) < t
    y_last = traj.particles[r] if at.size > 1 and traj.particles.ndim == 3 else traj.particles
    partial = traj._replace(ts=traj.ts[keep], observables={k: v[..., keep] for k, v in traj.observables.items()},
                            particles=y_last)
    if replay is None:  # adaptive steps: the step before is not known
        sde, args, t_last, y_bad, y_last = None, None, t, y_last, None
        quantity, cols, what, models_fault = _what_went_nonfinite(sde, args, t_last, y_last, y_bad, columns)
    else:
        key = replay.key[r] if replay.batched else replay.key
        args = replay.args[r] if replay.batched and replay.args.ndim == 3 else replay.args
        sde = replay.sde_of(key)[0]
        grid = replay.grid
        k_bad = int(np.atleast_1d(np.asarray(replay.diverged_step))[r])
        y_bad = one_step(replay.sde_of, replay.solver, key, y_last, args, grid, jnp.asarray(k_bad, jnp.int32))
        quantity, cols, what, models_fault = _what_went_nonfinite(sde, args, float(grid.time(k_bad)), y_last, y_bad,
                                                                  columns)
    who = f" in replicate {r}" if at.size > 1 else ""
    if models_fault:
        advice = "Check the unit and the prior where the particles were (the error's .trajectory.particles)."
    elif hint is not None:
        advice = hint(None if replay is None else y_last)
    else:
        advice = f"Take a smaller step than dt0 = {dt0:g}."
    raise DivergenceError(f"the particle state became non-finite{who} at t = {t:.6g} (step {step} of dt0 = {dt0:g}); "
                          f"the run stopped there and the error's .trajectory holds the saves before it and the last "
                          f"finite state{kept}. {what} {advice}", t, step, partial, r if at.size > 1 else None,
                          quantity, cols)


def _overflow_scale(dtype) -> float:
    # beyond √max a drift quadratic in Θ overflows: the state grew there, it did not start there
    return float(np.sqrt(np.finfo(dtype).max))


def _what_went_nonfinite(sde, args, t_last, y_last, y_bad, columns, offset: float = 0.0
                         ) -> tuple[str, tuple[str, ...], str, bool]:
    """(quantity, the column groups that went non-finite, a sentence saying so, whether the
    model rather than the step is at fault: its drift is undefined at an ordinary state).

    At the last finite state Θ_last: a non-finite drift b(t, Θ_last) is the model's
    (its unit, gradient or prior overflows or is undefined there, whatever the step); a
    non-finite noise scale is the schedule's; both finite means one step of the scheme took
    a finite state to a non-finite one, an unstable step. ``columns``: ((name, width), ...)
    naming the state's column groups (default one group, "theta"). ``t_last`` is in the
    sde's own time (a checkpoint segment's starts at 0); ``offset`` makes it the run's.
    """
    t_sde, t_last = t_last, t_last + offset
    y_bad = np.asarray(y_bad)
    n = y_bad.shape[0]
    columns = columns or (("theta", y_bad.shape[-1]),)
    bad_rows = int(np.sum(~np.all(np.isfinite(y_bad), axis=-1)))
    names, start = [], 0
    for name, width in columns:
        if not np.all(np.isfinite(y_bad[..., start:start + width])):
            names.append(name)
        start += width
    where = f"Non-finite first: {', '.join(names)} of {bad_rows} of {n} particles."
    if y_last is None:
        return "step", tuple(names), where, False
    y_last = jnp.asarray(y_last)
    size = float(jnp.max(jnp.abs(y_last)))
    if sde.drift is None:
        return "jump", tuple(names), (f"{where} A finite state at t = {t_last:.6g} (max |Θ| = {size:.3g}) went "
                                      "non-finite in one jump (the chain's update): an unstable step."), False
    drift = np.asarray(sde.drift(t_sde, y_last, args))
    bad_drift = int(np.sum(~np.all(np.isfinite(drift), axis=-1)))
    if bad_drift:
        said = (f"{where} The drift went non-finite first: at the last finite state (t = {t_last:.6g}, max |Θ| = "
                f"{size:.3g}) it is non-finite for {bad_drift} of {n} particles")
        if size > _overflow_scale(y_last.dtype):
            return "drift", tuple(names), (f"{said}, where the state had grown too large to evaluate it: "
                                           "unstable steps blew the state up until the drift overflowed."), False
        return "drift", tuple(names), (f"{said}, at a state of ordinary size: the unit, its gradient or the "
                                       "prior's log-density overflows or is undefined there, whatever the step."), True
    if sde.noise_scale is not None and not np.all(np.isfinite(np.asarray(sde.noise_scale(t_sde)))):
        return "noise", tuple(names), f"{where} The noise scale g(t) is non-finite at t = {t_last:.6g}.", False
    return "step", tuple(names), (f"{where} The drift and noise are finite at the last finite state (t = "
                                  f"{t_last:.6g}, max |Θ| = {size:.3g}, max |drift| = {np.max(np.abs(drift)):.3g}), so "
                                  "one step of the scheme took them to non-finite values: an unstable step."), False
