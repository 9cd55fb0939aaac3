"""The demo and the benchmark run end to end at smoke sizes (float32, fresh processes)."""

import json
import os
import subprocess
import sys

import numpy as np


def run(args, root, env=None):
    env = dict(os.environ, **(env or {}))
    env.pop("JAX_ENABLE_X64", None)
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_demo_smoke(root, tmp_path):
    res = run(["scripts/demo.py"], root, {"MFSDE_SMOKE": "1", "MFSDE_RUNS": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "risk" in res.stdout and "stationary" in res.stdout
    png = tmp_path / "demo" / "risk.png"
    assert png.stat().st_size > 1000
    saved = np.load(tmp_path / "demo" / "risk.npz")
    assert saved["risk"][-1] < 0.5 * saved["risk"][0]
    for name in ("marginals.png", "observables.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 1000
    import mfsde

    idata = mfsde.load(tmp_path / "demo" / "idata.nc")
    assert idata["posterior"].sizes["chain"] == 2 and "free_energy" in idata["observables"]
    assert "converged" in res.stdout and "r_hat" in res.stdout


def test_bench_smoke(root, tmp_path):
    out = tmp_path / "bench.json"
    res = run(["bench/langevin.py", "--smoke", "--json", str(out)], root)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    assert data["step"]["step_s"] > 0 and data["memory"]["temp_bytes"] >= 0
    assert "diffrax/scan" in res.stdout


def test_diagnostics_bench_smoke(root):
    res = run(["bench/diagnostics.py", "--smoke"], root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kl" in res.stdout and "w2_exact" in res.stdout and "to_inference_data" in res.stdout


def test_tutorials_run_at_smoke_size(root, tmp_path):
    for script in sorted((root / "tutorials").glob("*.py")):
        res = run([str(script)], root, {"MFSDE_SMOKE": "1", "MFSDE_RUNS": str(tmp_path)})
        assert res.returncode == 0, f"{script.name}:\n{res.stdout}\n{res.stderr}"
        pngs = list((tmp_path / script.stem).glob("*.png"))
        assert pngs and all(p.stat().st_size > 1000 for p in pngs), script.name


def test_fixed_point_bench_smoke(root):
    res = run(["bench/fixed_point.py", "--smoke"], root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "MCMC rounds" in res.stdout and "R-hat" in res.stdout


def test_tzen_raginsky_bench_smoke(root):
    res = run(["bench/tzen_raginsky.py", "--smoke"], root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bridge/langevin" in res.stdout and "peak memory" in res.stdout
