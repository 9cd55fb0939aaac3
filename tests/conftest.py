"""Tests run in float64: accuracy is checked against closed forms (docs/design.md §5)."""

import collections
import os
import pathlib
import subprocess
import sys
import threading
import time

# The tests are compile-bound at their small sizes: XLA's backend at -O0 compiles them faster
# and takes ~12% off the suite (measured: 7:52 -> 6:54 without the scripts). Set before jax
# starts its backend. The smoke scripts inherit it; the benchmarks proper (bench/ run by hand)
# time the optimised code.
_O0 = "--xla_backend_optimization_level=0"
if _O0 not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _O0).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def linear():
    import mfsde

    return mfsde.load_model(ROOT / "models" / "linear_gaussian.py")


@pytest.fixture(scope="session")
def neuron():
    import mfsde

    return mfsde.load_model(ROOT / "models" / "single_neuron.py")


@pytest.fixture(scope="session")
def small(neuron):
    """The planted tanh neuron at P = 20, d = 2, β = 20, and 8 prior particles: a problem
    that compiles fast, for tests of behaviour rather than statistics."""
    import mfsde

    x, y = neuron.make_data(jax.random.key(0), num_data=20, dim=2)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=20.0)
    return fe, fe.prior_sample(jax.random.key(1), 8)


class ScriptRunner:
    """Runs the demo, tutorials and benchmarks at smoke size in fresh float32 processes.

    They are compile-bound and single-threaded. All are queued when the session begins and
    run one after another on a worker thread, beside the unit tests: one core each. (Started
    all at once they starved the unit tests for minutes and then left a core idle while
    the unit tests finished alone.) tests/test_scripts.py waits for each and checks its
    output; a script asked for before its turn moves to the front of the queue.
    """

    def __init__(self, root, runs):
        self.root, self.runs = root, runs
        # the environment as the session began: a test's monkeypatched variable (e.g. a
        # memory limit) must not leak into a script that starts while it is set
        self.env = dict(os.environ, MFSDE_SMOKE="1", MFSDE_RUNS=str(runs), **{_LANE_ENV: "2"})
        self.queue, self.results, self.procs = collections.deque(), {}, {}
        self.seconds = {}  # wall time of each finished script, for the lane balance
        self.cond, self.worker = threading.Condition(), None

    def start(self, args):
        key = tuple(map(str, args))
        with self.cond:
            if key not in self.results and key not in self.procs and key not in self.queue:
                self.queue.append(key)
            if self.worker is None:
                self.worker = threading.Thread(target=self._work, daemon=True)
                self.worker.start()
        return key

    def _work(self):
        while True:
            with self.cond:
                if not self.queue:
                    self.worker = None
                    return
                key = self.queue.popleft()
                env = dict(self.env)
                env.pop("JAX_ENABLE_X64", None)
                proc = self.procs[key] = subprocess.Popen([sys.executable, *key], cwd=self.root, env=env,
                                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started = time.perf_counter()
            try:
                out, err = proc.communicate(timeout=1200)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            with self.cond:
                self.results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
                self.seconds[key] = time.perf_counter() - started
                del self.procs[key]
                self.cond.notify_all()

    def run(self, args):
        key = tuple(map(str, args))
        with self.cond:
            if key in self.queue:
                self.queue.remove(key)
                self.queue.appendleft(key)
        self.start(args)
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.results, timeout=2400):
                raise TimeoutError(f"{' '.join(key)} did not finish")
            return self.results[key]

    def close(self):
        with self.cond:
            self.queue.clear()
            for proc in self.procs.values():
                proc.kill()


# The second lane: statistical tests marked ``lane2`` run in a pytest subprocess queued first
# with the scripts, on the scripts' core, when the session also runs the scripts (``make
# test``). The unit tests alone fill one core for longer than the scripts fill the other;
# this balances the two. Run by themselves (e.g. ``pytest tests/test_validation.py``) the
# marked tests run in the session as usual.
_LANE_ENV = "MFSDE_LANE"


def pytest_configure(config):
    config.addinivalue_line("markers", "lane2: a long statistical test that make test runs in the second lane")
    config.addinivalue_line("markers", "bench: a benchmark at smoke size (make test-all and CI; make test leaves it out)")


@pytest.hookimpl(trylast=True)  # after -m has deselected: what is left decides the lanes
def pytest_collection_modifyitems(config, items):
    in_lane = os.environ.get(_LANE_ENV) == "2"
    with_scripts = any("test_scripts.py" in item.nodeid for item in items)
    lane = [item for item in items if item.get_closest_marker("lane2") is not None]
    if in_lane or (with_scripts and lane):
        keep = lane if in_lane else [item for item in items if item not in lane]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
    config.stash[_PRESTART] = with_scripts and not in_lane
    config.stash[_BENCH] = any(item.get_closest_marker("bench") is not None for item in items)
    config.stash[_LANE] = ([] if in_lane or not with_scripts else
                           ["-m", "pytest", "-q", "-p", "no:cacheprovider", *[item.nodeid for item in lane]])


_PRESTART = pytest.StashKey[bool]()
_BENCH = pytest.StashKey[bool]()
_LANE = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def second_lane(request):
    """The second lane's command (``python -m pytest`` on the lane2 tests), or [] if the
    session runs them itself."""
    return request.config.stash.get(_LANE, [])


@pytest.fixture(scope="session", autouse=True)
def scripts(request, tmp_path_factory):
    runner = ScriptRunner(ROOT, tmp_path_factory.mktemp("runs"))
    if not request.config.stash.get(_PRESTART, False):
        yield runner  # started on demand, e.g. when one script test is selected
        return
    lane = request.config.stash.get(_LANE, [])
    if lane:
        runner.start(lane)
    runner.start(["scripts/demo.py"])
    runner.start(["tests/scripts/rotskoff_notebook.py"])
    runner.start(["tests/scripts/sharded_runs.py", str(runner.runs / "sharded.json")])
    for script in sorted((ROOT / "tutorials").glob("*.py")):
        runner.start([str(script)])
    bench = request.config.stash.get(_BENCH, False)  # `make test-all` (CI) runs the benchmarks' smoke sizes
    for args in () if not bench else (["bench/compile.py", "--smoke"], ["bench/langevin.py", "--smoke", "--json", str(runner.runs / "bench.json")],
                 ["bench/diagnostics.py", "--smoke"], ["bench/tzen_raginsky.py", "--smoke"],
                 ["bench/fixed_point.py", "--smoke"], ["bench/sgd.py", "--smoke"], ["bench/validation.py", "--smoke"],
                 ["bench/robustness.py", "--smoke"], ["bench/wfr.py", "--smoke"], ["bench/transport.py", "--smoke", "--online"],
                 ["bench/scale.py", "--smoke", "--devices", "1", "2"]):
        runner.start(args)
    yield runner
    _RUNNERS.append(runner)
    runner.close()


_RUNNERS = []


def pytest_terminal_summary(terminalreporter):
    """The second lane's scripts and their wall times: the lane's total against the unit
    tests' is what the suite's budget is balanced on."""
    for runner in _RUNNERS:
        if runner.seconds:
            total = sum(runner.seconds.values())
            terminalreporter.write_line(f"second lane: {len(runner.seconds)} scripts, {total:.0f} s")
            for key, sec in sorted(runner.seconds.items(), key=lambda kv: -kv[1]):
                terminalreporter.write_line(f"  {sec:7.1f} s  {' '.join(key)[:90]}")
