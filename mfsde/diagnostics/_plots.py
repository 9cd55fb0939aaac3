"""Figures: particle marginals against the prior, traces of the observables."""

from __future__ import annotations

import math

import numpy as np
from .. import _checks

__all__ = ["plot_marginals", "plot_observables"]


def plot_marginals(idata, fe, max_panels: int = 6, path=None):
    """Histograms of the first ``max_panels`` scalar coordinates of the posterior particles
    (constrained space, all chains pooled) against a prior sample of the same size.

    Examples:
        >>> import jax, mfsde
        >>> fe = mfsde.load_model("linear_gaussian").free_energy(num_data=64, dim=2, beta=4.0)
        >>> starts = mfsde.overdispersed_starts(fe, jax.random.key(1), 2, 32)       # 2 replicates of N = 32
        >>> runs = mfsde.langevin(fe, jax.random.split(jax.random.key(2), 2), starts, t1=10.0, dt0=0.1, progress=False)
        >>> idata = mfsde.to_inference_data(runs, fe)
        >>> fig = mfsde.plot_marginals(idata, fe)              # one panel per coordinate (at most 6)
        >>> len(fig.axes) >= 2
        True
    """
    import jax
    import matplotlib.pyplot as plt

    _checks.idata("idata", idata)
    post = idata["posterior"].to_dataset()
    n = post.sizes["chain"] * post.sizes["draw"]
    prior = fe.unflatten(fe.prior_sample(jax.random.key(0), n))
    panels = []
    for name in fe.unit.site_names:
        v = post[name].values.reshape(n, -1)
        pv = np.asarray(prior[name]).reshape(n, -1)
        for j in range(v.shape[1]):
            label = name if v.shape[1] == 1 else f"{name}[{j}]"
            panels.append((label, v[:, j], pv[:, j]))
    panels = panels[:max_panels]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (label, v, pv) in zip(axes.flat, panels):
        bins = np.histogram_bin_edges(np.r_[v, pv], bins=40)
        ax.hist(pv, bins=bins, density=True, alpha=0.5, label="prior")
        ax.hist(v, bins=bins, density=True, alpha=0.6, label="particles")
        ax.set_title(label)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_observables(idata, names=("risk", "free_energy", "kl_to_prior", "w2_to_prior_bound"), path=None):
    """Traces of the recorded observables against time, one line per replicate run.

    One panel per name in ``names`` that the DataTree's ``observables`` group holds; returns
    the matplotlib figure (also written to ``path`` when given).

    Examples:
        >>> import jax, mfsde
        >>> fe = mfsde.load_model("linear_gaussian").free_energy(num_data=64, dim=2, beta=4.0)
        >>> starts = mfsde.overdispersed_starts(fe, jax.random.key(1), 2, 32)       # 2 replicates of N = 32
        >>> runs = mfsde.langevin(fe, jax.random.split(jax.random.key(2), 2), starts, t1=10.0, dt0=0.1, progress=False)
        >>> idata = mfsde.to_inference_data(runs, fe)
        >>> fig = mfsde.plot_observables(idata)
        >>> len(fig.axes) >= 1
        True
    """
    import matplotlib.pyplot as plt

    _checks.idata("idata", idata)
    obs = idata["observables"].to_dataset()
    names = [k for k in names if k in obs]
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 2.8), squeeze=False)
    t = obs["time"].values
    for ax, name in zip(axes.flat, names):
        for c in range(obs.sizes["chain"]):
            v = obs[name].values[c]
            saved = ~np.isnan(v)  # a diagnostic saved only at the budgeted saves is NaN at the others
            ax.plot(t[saved], v[saved], lw=1, marker="." if not saved.all() else None, ms=3)
        if name == "risk":
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("t")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
