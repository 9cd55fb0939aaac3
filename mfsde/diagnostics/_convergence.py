"""Convergence of a run: R-hat and ESS across replicate runs (ArviZ), stationarity in time."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["stationarity", "summary", "Summary", "Stationarity", "RHAT_MAX"]

# Replicate runs agree when every site's rank-normalised R-hat is below this.
RHAT_MAX = 1.05


class Stationarity(NamedTuple):
    """Mean of an observable over the last quarter of the saved times vs the quarter before."""

    stationary: bool
    before: float
    last: float
    threshold: float


def stationarity(values, ts, rel_tol: float = 0.02, z: float = 3.0) -> Stationarity:
    """Is an observable flat at the end of a run?

    Compares the means over t in (t_½, t_¾] and (t_¾, t1] (t_q the q-quantile of the run's
    time span): stationary when they differ by less than ``z`` standard errors of the
    difference or by less than ``rel_tol`` relative. The standard errors use ArviZ's
    effective sample size of each window (saved values are autocorrelated in time), the
    chains of ``values`` (chains, T) as chains; a (T,) series is one chain.
    """
    from arviz_stats import ess

    v = np.asarray(values, np.float64)
    v = v[None] if v.ndim == 1 else v
    ts = np.asarray(ts, np.float64)
    span = ts[-1] - ts[0]
    last = v[:, ts > ts[0] + 0.75 * span]
    before = v[:, (ts > ts[0] + 0.5 * span) & (ts <= ts[0] + 0.75 * span)]
    if last.shape[1] < 4 or before.shape[1] < 4:
        return Stationarity(False, float("nan"), float("nan"), float("nan"))

    def var_of_mean(w):
        n_eff = float(ess(w, method="mean"))
        return w.var(ddof=1) / max(min(n_eff, w.size), 1.0)

    se = math.sqrt(var_of_mean(last) + var_of_mean(before))
    threshold = max(z * se, rel_tol * abs(last.mean()))
    if not math.isfinite(threshold):
        threshold = rel_tol * abs(last.mean())
    return Stationarity(bool(abs(last.mean() - before.mean()) < threshold), float(before.mean()),
                        float(last.mean()), float(threshold))


class Summary(NamedTuple):
    """``mfsde.summary``: the ArviZ table, the theory's numbers at the end of the run, a verdict."""

    table: object
    risk: float
    free_energy: float
    kl_to_prior: float
    w2_to_prior: float
    converged: bool
    reason: str

    def __str__(self):
        nums = ", ".join(f"{k} = {getattr(self, k):.5g}" for k in ("risk", "free_energy", "kl_to_prior", "w2_to_prior"))
        verdict = "converged" if self.converged else "NOT converged"
        return f"{self.table}\n{nums}\n{verdict}: {self.reason}"


def summary(idata, fe=None) -> Summary:
    """ArviZ summary of the posterior (R-hat and ESS across replicate runs as chains) plus the
    final risk, free energy, KL(ρ‖π₀) and W2(ρ, π₀), and a converged / not verdict.

    Converged means: (1) with two or more replicate runs, every site's R-hat < ``RHAT_MAX``
    (replicates from independent starts agree in law); (2) the risk and, when recorded, the
    free energy are stationary (``stationarity``). W2 is the exact estimate
    ``w2_to_prior`` of the first chain's particles when ``fe`` is given, else the recorded
    Gelbrich lower bound (NaN if neither is available).
    """
    import arviz_stats

    table = arviz_stats.summary(idata, kind="all")
    obs = idata["observables"].to_dataset() if "observables" in idata.children else None
    chains = idata["posterior"].sizes["chain"]

    def last(name):
        return float(obs[name].isel(time=-1).mean()) if obs is not None and name in obs else float("nan")

    w2 = last("w2_to_prior_bound")
    if fe is not None:
        from ._divergence import w2_to_prior
        import jax

        post = idata["posterior"].to_dataset()
        values = {k: post[k].isel(chain=0).values for k in fe.unit.site_names}
        flat = jax.vmap(fe.unit.flatten)(values)
        w2 = w2_to_prior(flat, fe)
    reasons, ok = [], True
    if chains >= 2:
        worst = float(np.nanmax(np.asarray(table["r_hat"], np.float64)))
        if worst < RHAT_MAX:
            reasons.append(f"R-hat across {chains} runs <= {worst:.3f} < {RHAT_MAX}")
        else:
            ok = False
            reasons.append(f"R-hat across {chains} runs reaches {worst:.3f} >= {RHAT_MAX}: the runs disagree in law")
    else:
        reasons.append("one run: no R-hat across runs (pass a batch of keys to langevin)")
    if obs is None:
        ok = False
        reasons.append("no observables recorded")
    else:
        ts = obs["time"].values
        for name in ("risk", "free_energy"):
            if name in obs:
                st = stationarity(obs[name].values, ts)
                if st.stationary:
                    reasons.append(f"{name} stationary ({st.before:.4g} -> {st.last:.4g})")
                else:
                    ok = False
                    reasons.append(f"{name} still moving ({st.before:.4g} -> {st.last:.4g}, more than {st.threshold:.2g})")
    return Summary(table, last("risk"), last("free_energy"), last("kl_to_prior"), float(w2), ok, "; ".join(reasons))
