"""The demo, tutorials and benchmarks run end to end at smoke sizes (float32, fresh processes,
started together at the beginning of the session by tests/conftest.py)."""

import json

import numpy as np
import pytest


def test_demo_smoke(scripts):
    tmp_path = scripts.runs
    res = scripts.run(["scripts/demo.py"])
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


@pytest.mark.bench
def test_bench_smoke(scripts):
    out = scripts.runs / "bench.json"
    res = scripts.run(["bench/langevin.py", "--smoke", "--json", str(out)])
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    assert data["step"]["step_s"] > 0 and data["memory"]["temp_bytes"] >= 0
    assert "diffrax/scan" in res.stdout


@pytest.mark.bench
def test_diagnostics_bench_smoke(scripts):
    res = scripts.run(["bench/diagnostics.py", "--smoke"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kl" in res.stdout and "w2_exact" in res.stdout and "to_inference_data" in res.stdout


def test_tutorials_run_at_smoke_size(root, scripts):
    for script in sorted((root / "tutorials").glob("*.py")):
        res = scripts.run([str(script)])
        assert res.returncode == 0, f"{script.name}:\n{res.stdout}\n{res.stderr}"
        pngs = list((scripts.runs / script.stem).glob("*.png"))
        assert pngs and all(p.stat().st_size > 1000 for p in pngs), script.name


@pytest.mark.bench
def test_fixed_point_bench_smoke(scripts):
    res = scripts.run(["bench/fixed_point.py", "--smoke"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "MCMC rounds" in res.stdout and "R-hat" in res.stdout


@pytest.mark.bench
def test_tzen_raginsky_bench_smoke(scripts):
    res = scripts.run(["bench/tzen_raginsky.py", "--smoke"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bridge/langevin" in res.stdout and "peak memory" in res.stdout
    assert "transport map" in res.stdout and "value function" in res.stdout


@pytest.mark.bench
def test_sgd_bench_smoke(scripts):
    res = scripts.run(["bench/sgd.py", "--smoke"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "steps/s" in res.stdout and "planted" in res.stdout and "anisotropic" in res.stdout and "exact at d = 40" in res.stdout


@pytest.mark.bench
def test_validation_bench_smoke(scripts):
    res = scripts.run(["bench/validation.py", "--smoke"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ESS/s" in res.stdout and "LM/Euler" in res.stdout


@pytest.mark.bench
def test_robustness_bench_smoke(scripts):
    res = scripts.run(["bench/robustness.py", "--smoke"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "UnitModel trace" in res.stdout and "DivergenceError" in res.stdout and "memory check" in res.stdout


@pytest.mark.bench
def test_transport_bench_smoke(scripts):
    res = scripts.run(["bench/transport.py", "--smoke", "--online"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "exact" in res.stdout and "ott-jax" in res.stdout and "POT" in res.stdout, res.stdout
    assert "per iteration" in res.stdout, res.stdout


@pytest.mark.bench
def test_wfr_bench_smoke(scripts):
    res = scripts.run(["bench/wfr.py", "--smoke"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ratio to langevin" in res.stdout and "time to within" in res.stdout and "log-log slope" in res.stdout


@pytest.mark.bench
def test_compile_bench_smoke(scripts):
    res = scripts.run(["bench/compile.py", "--smoke"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "sweep / run" in res.stdout, res.stdout


@pytest.mark.bench
def test_scale_bench_smoke(scripts):
    res = scripts.run(["bench/scale.py", "--smoke", "--devices", "1", "2"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "efficiency t(1)/t(2)" in res.stdout and "all-reduce" in res.stdout and "largest N" in res.stdout


def test_second_lane(scripts, second_lane):
    """The lane2 statistical tests, run beside the unit tests (tests/conftest.py)."""
    if not second_lane:
        pytest.skip("no second lane: the lane2 tests ran in this session")
    res = scripts.run(second_lane)
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-4000:]
    assert " passed" in res.stdout, res.stdout[-2000:]
