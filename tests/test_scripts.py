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


def test_bench_smoke(root, tmp_path):
    out = tmp_path / "bench.json"
    res = run(["bench/langevin.py", "--smoke", "--json", str(out)], root)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    assert data["step"]["step_s"] > 0 and data["memory"]["temp_bytes"] >= 0
    assert "diffrax/scan" in res.stdout
