"""Rotskoff's gaussian_example (neuron-birth-death) as mfsde.wfr runs: prints the final risks
as JSON for tests/test_wfr.py. It is a step-bound run of 3 x 10 000 steps, so it runs in its
own process with XLA's optimisations on (the unit tests compile at -O0, where these steps
are ~10x slower), queued with the other scripts by tests/conftest.py."""

import json
import math
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mfsde  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    bumps = mfsde.load_model(ROOT / "models" / "gaussian_bumps.py")
    x, y = bumps.make_data()
    fe = mfsde.FreeEnergy(bumps.unit, x, y, beta=math.inf)
    d = bumps.DEFAULTS
    # the two starts are the two replicates of one run per dynamics
    starts = jnp.stack([bumps.start(jax.random.key(0)), bumps.bad_start(jax.random.key(0))])
    t_good, t_bad = d["steps"] * d["dt0"], d["bad_steps"] * d["dt0"]
    r0 = float(jnp.mean(y**2))
    out = {}
    for variant in (None, "clone", "prior"):
        traj = mfsde.wfr(fe, jax.random.split(jax.random.key(1), 2), starts, t1=t_bad, dt0=d["dt0"],
                         alpha=0.0 if variant is None else bumps.alpha(), birth_death=variant,
                         ts=np.array([0.0, t_good, t_bad]), diagnostics=False, progress=False)
        risk = np.asarray(traj.observables["risk"], np.float64) / r0
        out[str(variant)] = {"good": float(risk[0, 1]), "bad": float(risk[1, 2])}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
