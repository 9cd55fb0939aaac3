"""The save grid of a run: which steps are saved, at which times (one rule for every family)."""

from __future__ import annotations

import math

import diffrax
import jax
import numpy as np

from ._engine import num_fixed_steps, save_steps_of

__all__ = ["DEFAULT_NUM_SAVES", "default_save_steps", "check_span", "is_fixed_grid", "grid_times", "save_steps", "step_times", "save_times",
           "whole_steps"]

# Saves of a default grid: up to this many points in [t0, t1].
DEFAULT_NUM_SAVES = 101


def default_save_steps(num_steps: int, num_saves: int = DEFAULT_NUM_SAVES) -> np.ndarray:
    """The default save grid of a run of n = ``num_steps`` steps: up to ``num_saves``
    equally spaced steps k_j = round(j n / (num_saves − 1)), the first 0 and the last n."""
    return np.unique(np.round(np.linspace(0, num_steps, min(num_saves, num_steps + 1))).astype(np.int64))


def check_span(t0: float, t1: float, dt0: float) -> None:
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
        raise ValueError(f"need finite t0 < t1, got t0={t0}, t1={t1}")
    if not (math.isfinite(dt0) and dt0 > 0):
        raise ValueError(f"dt0 must be a positive number, got {dt0}")


def is_fixed_grid(controller) -> bool:
    return controller is None or isinstance(controller, (diffrax.ConstantStepSize, diffrax.StepTo))


def grid_times(controller):
    return np.asarray(controller.ts, np.float64) if isinstance(controller, diffrax.StepTo) else None


def _checked_ts(ts, t0: float, t1: float) -> np.ndarray:
    ts = np.asarray(ts, np.float64)
    if ts.ndim != 1 or not ts.size:
        raise ValueError(f"ts must be a non-empty 1-D array of times, got shape {ts.shape}")
    # times from a float32 run (e.g. another trajectory's ts) may overshoot an end by rounding
    slack = 4 * np.finfo(np.float32).eps * max(abs(t0), abs(t1), 1.0)
    ts = np.where((ts > t1) & (ts <= t1 + slack), t1, np.where((ts < t0) & (ts >= t0 - slack), t0, ts))
    if np.any(np.diff(ts) <= 0) or ts[0] < t0 or ts[-1] > t1:
        raise ValueError(f"ts must be increasing and within [t0, t1] = [{t0}, {t1}], got {ts}")
    return ts


def save_steps(ts, t0: float, t1: float, dt0: float, stepsize_controller=None, jump_every: int = 1) -> np.ndarray:
    """Step indices k of the saves of a fixed-step run (its state at t_k): ``ts`` moved to
    the nearest step (the nearest end of a jump interval of ``jump_every`` steps), or by
    default up to 101 equally spaced ones. An off-grid time is never interpolated: between
    steps an SDE's interpolant is not a state of the chain (a linear interpolant α of the
    way through a step carries a fraction α² + (1 − α)² < 1 of its noise variance)."""
    check_span(t0, t1, dt0)
    times = grid_times(stepsize_controller)
    n = len(times) - 1 if times is not None else num_fixed_steps(t0, t1, dt0)
    if n % jump_every:
        raise ValueError(f"the run's {n} steps are not a whole number of jump intervals of {jump_every} steps")
    m = n // jump_every
    if ts is None:
        return default_save_steps(m) * jump_every
    ts = _checked_ts(ts, t0, t1)
    if times is not None:
        ks = np.abs(times[None, :] - ts[:, None]).argmin(axis=1).astype(np.int64)
    else:
        ks = save_steps_of(ts, t0, (t1 - t0) / n, n, jump_every)
    if np.any(np.diff(ks) <= 0):
        if jump_every > 1:
            raise ValueError(f"ts must be increasing, at most one save per jump interval of {jump_every} steps of "
                             f"dt0 = {dt0:g} (nearest interval ends: {ks.tolist()})")
        raise ValueError(f"ts has two save times within one step of dt0 = {dt0:g} (nearest steps {ks.tolist()}); "
                         "observables of a run are taken at the chain's own states, so space ts by at least "
                         "dt0 or take a smaller dt0")
    return ks


def step_times(ks: np.ndarray, t0: float, t1: float, dt0: float, stepsize_controller=None) -> np.ndarray:
    times = grid_times(stepsize_controller)
    if times is not None:
        return times[ks]
    n = num_fixed_steps(t0, t1, dt0)
    return np.where(ks >= n, t1, t0 + ks * ((t1 - t0) / n))


def save_times(ts, t0: float, t1: float, dt0: float, stepsize_controller=None, noisy: bool = True,
               jump_every: int = 1):
    """The save times a run uses (numpy): on fixed steps the times of ``save_steps``; for an
    adaptive controller ``ts`` as given (default 101 points in [t0, t1]). Traced ``ts``
    come back as they are."""
    check_span(t0, t1, dt0)
    if isinstance(ts, jax.core.Tracer):
        return ts
    if not is_fixed_grid(stepsize_controller):
        if ts is None:
            return np.linspace(t0, t1, min(DEFAULT_NUM_SAVES, num_fixed_steps(t0, t1, dt0) + 1))
        return _checked_ts(ts, t0, t1)
    ks = save_steps(ts, t0, t1, dt0, stepsize_controller, jump_every)
    return step_times(ks, t0, t1, dt0, stepsize_controller)


def whole_steps(t0: float, t1: float, dt0: float, what: str) -> int:
    n = num_fixed_steps(t0, t1, dt0)
    if abs((t1 - t0) / dt0 - n) > 1e-6:
        raise ValueError(f"{what} needs (t1 - t0) / dt0 to be a whole number of steps, got {(t1 - t0) / dt0:g}")
    return n
