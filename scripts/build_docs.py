"""Build the documentation site: render the tutorials into docs/tutorials/, then mkdocs.

    python scripts/build_docs.py              # fast: tutorials as code and text, not run
    python scripts/build_docs.py --execute    # run each tutorial (smoke size) for its output and figures
    python scripts/build_docs.py --execute --full   # the tutorials' full sizes (hours on a CPU)

The tutorials are jupytext percent scripts. Rendering parses their cells with jupytext; with
--execute each tutorial runs in a fresh process, cell by cell in one namespace, and its page
gets each code cell's printed output and the figures that cell wrote (under MFSDE_RUNS).
mkdocs then builds ``site/`` in strict mode: any warning fails the build.
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RENDERED = DOCS / "tutorials"


def cells(path):
    import jupytext

    nb = jupytext.read(path)
    return [(c.cell_type, c.source) for c in nb.cells if c.source.strip()]


def run_cells(path, runs, record):
    """Execute a tutorial cell by cell; write [(stdout, [figure paths])] per cell to ``record``."""
    import matplotlib

    matplotlib.use("Agg")
    namespace = {"__name__": "__main__", "__file__": str(path)}
    outputs = []
    for kind, source in cells(path):
        if kind != "code":
            continue
        before = {p: p.stat().st_mtime_ns for p in runs.rglob("*.png")}
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(source, str(path), "exec"), namespace)
        after = sorted(p for p in runs.rglob("*.png") if before.get(p) != p.stat().st_mtime_ns)
        outputs.append((buffer.getvalue(), [str(p) for p in after]))
    pathlib.Path(record).write_text(json.dumps(outputs))


def render(path, execute, full):
    """docs/tutorials/<name>.md from tutorials/<name>.py (with outputs when ``execute``)."""
    name = path.stem
    outputs = None
    if execute:
        runs = ROOT / "runs" / "docs"
        runs.mkdir(parents=True, exist_ok=True)
        record = runs / f"{name}.json"
        env = dict(os.environ, MFSDE_RUNS=str(runs), MPLBACKEND="Agg")
        if not full:
            env["MFSDE_SMOKE"] = "1"
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--run-one", str(path), str(runs), str(record)], cwd=ROOT, env=env,
                       check=True)
        print(f"ran {path.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        outputs = iter(json.loads(record.read_text()))
    figures = RENDERED / name
    lines = []
    for kind, source in cells(path):
        if kind == "markdown":
            lines += [source, ""]
            continue
        lines += ["```python", source, "```", ""]
        if outputs is None:
            continue
        text, pngs = next(outputs)
        if text.strip():
            lines += ["```text", text.rstrip(), "```", ""]
        for png in pngs:
            figures.mkdir(parents=True, exist_ok=True)
            shutil.copy(png, figures / pathlib.Path(png).name)
            lines += [f"![{pathlib.Path(png).stem}]({name}/{pathlib.Path(png).name})", ""]
    note = ("" if execute else "\n!!! note\n    Rendered without running; `make docs` runs the tutorials and adds "
            "their output and figures.\n")
    header = f"<!-- rendered from tutorials/{path.name} by scripts/build_docs.py; do not edit -->\n{note}\n"
    (RENDERED / f"{name}.md").write_text(header + "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true", help="run the tutorials (smoke size unless --full)")
    parser.add_argument("--full", action="store_true", help="run the tutorials at their full sizes")
    parser.add_argument("--site", default=str(ROOT / "site"), help="output folder (default: site/)")
    parser.add_argument("--run-one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        path, runs, record = args.run_one
        run_cells(pathlib.Path(path), pathlib.Path(runs), record)
        return
    if RENDERED.exists():
        shutil.rmtree(RENDERED)
    RENDERED.mkdir(parents=True)
    tutorials = sorted((ROOT / "tutorials").glob("*.py"))
    index = ["# Tutorials", "", "Jupytext percent scripts in `tutorials/`: run one with `python tutorials/<name>.py` "
             "(set `MFSDE_SMOKE=1` for a tiny run; figures go to `runs/<name>/`).", ""]
    for path in tutorials:
        render(path, args.execute, args.full)
        index.append(f"- [{path.stem}]({path.stem}.md)")
    (RENDERED / "index.md").write_text("\n".join(index) + "\n")
    shutil.copy(ROOT / "CHANGELOG.md", DOCS / "changelog.md")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(ROOT / "mkdocs.yml"),
                    "-d", str(pathlib.Path(args.site).resolve())], cwd=ROOT, check=True,
                   env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))


if __name__ == "__main__":
    main()
