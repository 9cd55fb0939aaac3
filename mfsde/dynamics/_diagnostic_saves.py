"""Which saves of a run carry the in-run diagnostics: a budget of the run's cost.

A diagnostic save (the k-NN KL, the free energy, the Stein residual and curvature) costs
about ``_SAVE_DRIFTS`` drift evaluations for the Stein part and the risk, plus the k-NN
search: O(N² D) against the drift's O(N P D), i.e. about N/P drift evaluations (at most
that for any unit that reads each of its D parameters at each of the P points). A run of
S steps costs at least S drift evaluations. By default the diagnostics may cost at most
``DIAGNOSTICS_BUDGET`` of that,

    m = ⌊budget · S / (_SAVE_DRIFTS + N/P)⌋ diagnostic saves,

spread as every k-th save counted back from the last (k = ⌈T/m⌉ of T saves), so the
final save always has them and the ones used lie on an equally spaced grid (what ESS
needs). m = 0 (a run shorter than ~10 · (_SAVE_DRIFTS + N/P) steps): none.
"""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from ..diagnostics._convergence import diagnostic_save_indices
from ._observables import DiagnosticGate

__all__ = ["DIAGNOSTICS_BUDGET", "diagnostics_every", "diagnostic_save_indices", "diagnostic_policy", "diagnostic_gate"]

DIAGNOSTICS_BUDGET = 0.1
# Drift evaluations' worth of time per diagnostic save besides the k-NN search: an upper
# bound on the Stein residual's forward-over-reverse pass over the sizes measured in
# bench/README.md (small N pays fixed costs), so that the budget holds at every one.
_SAVE_DRIFTS = 20.0
# The k-NN KL (k = 1) needs a neighbour.
_MIN_PARTICLES = 2


def diagnostics_every(num_steps: int, num_saves: int, num_particles: int, num_data: int,
                      budget: float = DIAGNOSTICS_BUDGET) -> int:
    """k: every k-th save (counted back from the last) carries the diagnostics; 0: none.

    k = ⌈T / m⌉ with m = ⌊budget · S / (_SAVE_DRIFTS + N/P)⌋ affordable saves (module
    docstring), so the ⌈T/k⌉ ≤ m diagnostic saves cost at most ``budget`` of the run."""
    per_save = _SAVE_DRIFTS + num_particles / num_data
    affordable = int(math.floor(budget * num_steps / per_save))
    if affordable < 1:
        return 0
    return max(1, math.ceil(num_saves / affordable))


def diagnostic_policy(diagnostics, ts, t0: float, t1: float, dt0: float, stepsize_controller,
                      num_particles: int, num_data: int) -> int:
    """k of ``diagnostics_every`` for a run's ``diagnostics`` option: ``True`` 1 (every
    save), ``False`` 0 (none), ``None`` the budget over the run's steps and saves ``ts``;
    none for a cloud too small for a nearest neighbour (an error if asked for)."""
    if diagnostics is not None and not isinstance(diagnostics, (bool, np.bool_)):
        raise TypeError(f"diagnostics must be True, False or None (a budget of 10% of the run), got {diagnostics!r}")
    if num_particles < _MIN_PARTICLES:
        if diagnostics:
            raise ValueError(f"particles0 needs at least {_MIN_PARTICLES} particles for the in-run diagnostics (the "
                             f"k-NN KL uses each particle's nearest neighbour); got N = {num_particles}: pass "
                             f"diagnostics=False")
        return 0
    if diagnostics is not None:
        return int(bool(diagnostics))
    if isinstance(stepsize_controller, diffrax.StepTo):
        steps = len(stepsize_controller.ts) - 1
    else:  # fixed steps; for an adaptive controller, the steps dt0 would take
        steps = math.ceil((t1 - t0) / dt0 - 1e-9)
    return diagnostics_every(steps, int(np.shape(ts)[0]), num_particles, num_data)


def diagnostic_gate(ts, every: int, dt0: float, dtype) -> DiagnosticGate | None:
    """The ``DiagnosticGate`` of every k-th save (k = ``every``) counted back from the last:
    the save times that carry diagnostics, NaN at the others, shape (T,), and a tolerance
    of a quarter of the smallest save spacing, both arrays of a fixed shape (a run of other
    dt0 or t1 reuses the compiled program); None when no save has them."""
    if every < 1:
        return None
    num = int(np.shape(ts)[0])
    idx = diagnostic_save_indices(num, every)
    spacing = dt0 if isinstance(ts, jax.core.Tracer) or num < 2 else min(dt0, float(np.min(np.diff(ts))))
    mask = np.zeros(num, bool)
    mask[idx] = True
    gated = jnp.where(jnp.asarray(mask), jnp.asarray(ts, dtype), jnp.nan)
    return DiagnosticGate(gated, jnp.asarray(0.25 * spacing, dtype))
