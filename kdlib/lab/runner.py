"""Execute the notebooks headless and publish their reports.

For each notebook (in file-name order): papermill runs it with the profile's
parameters, nbconvert renders HTML with images embedded, and the headline
metrics it emitted go into ``reports/<notebook>.json`` together with the run's
metadata. ``reports/index.html`` links everything and marks failures. Runs of
the `cpu` and `gpu` profiles also update the committed results of record
(``reports/results/<profile>/<notebook>.json`` and ``reports/RESULTS.md``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kdlib.lab import emit, params, report_pages
from kdlib.lab.paths import REPO_ROOT, reports_dir

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RECORD_PROFILES = ("cpu", "gpu")
KERNEL = "python3"
# Progress bars drawn into a saved notebook freeze at whatever state they were last in, so
# headless kernels get none from tqdm-based libraries; kdlib.lab.progress prints plain lines instead.
HEADLESS_ENV = {"KDLIB_HEADLESS": "1", "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


@dataclass
class NotebookRun:
    stem: str
    status: str = "pending"          # ok | failed
    duration_s: float = 0.0
    metrics: list[dict] = field(default_factory=list)
    finding: str = ""                # the notebook's one-line finding (`emit.finding`)
    figure: str | None = None        # file name of its key figure, beside the HTML
    error: dict | None = None
    parameters: dict = field(default_factory=dict)


def discover(only: list[str] | None = None, folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Notebooks in order; `only` selects by prefix (`03`) or full stem."""
    found = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not only:
        return found
    picked = [p for p in found if any(p.stem == o or p.stem.startswith(o + "_") or p.stem == o.removesuffix(".ipynb")
                                      for o in only)]
    missing = [o for o in only if not any(p.stem == o or p.stem.startswith(o + "_") for p in found)]
    if missing:
        raise params.ParameterError(f"--only {missing}: no such notebook; have {[p.stem for p in found]}")
    return picked


def git_info() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run("rev-parse", "--short", "HEAD") or "unknown", "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def machine_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def plan(profile_name: str, only: list[str] | None, overrides: dict[str, str],
         folder: Path = NOTEBOOKS_DIR, profiles_dir: Path = params.PROFILES_DIR) -> dict[Path, dict]:
    """Validate everything before running anything: profile, notebook names, parameters."""
    profile = params.load_profile(profile_name, profiles_dir)
    notebooks = discover(only, folder)
    if not notebooks:
        raise params.ParameterError(f"no notebooks found in {folder}")
    params.check_profile_notebooks(profile, {p.stem for p in discover(None, folder)}, profile_name)
    if only:  # per-notebook profile sections for notebooks not being run are irrelevant here
        profile = {**profile, "notebooks": {k: v for k, v in (profile.get("notebooks") or {}).items()
                                            if k in {p.stem for p in notebooks}}}
    specs = {p.stem: params.notebook_params(p) for p in notebooks}
    lab_names = set().union(*(params.notebook_params(p) for p in discover(None, folder)))
    resolved = params.resolve(specs, profile, overrides, lab_names)
    return {p: resolved[p.stem] for p in notebooks}


def execute(path: Path, values: dict, out_dir: Path, profile: str) -> NotebookRun:
    """Run one notebook; the output notebook and HTML are written even when it fails."""
    import nbformat
    import papermill

    run = NotebookRun(path.stem, parameters=values)
    out_nb = out_dir / f"{path.stem}.ipynb"
    env_backup = dict(os.environ)
    os.environ.update(HEADLESS_ENV | {"KDLIB_PROFILE": profile, "KDLIB_NOTEBOOK": path.stem})
    start = time.monotonic()
    try:
        papermill.execute_notebook(str(path), str(out_nb), parameters=values, kernel_name=KERNEL,
                                   cwd=str(path.parent), progress_bar=False, report_mode=False,
                                   # the kernel's own start-up warnings (TCP transport on loopback) are noise
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"])
        run.status = "ok"
    except papermill.PapermillExecutionError as exc:
        run.status = "failed"
        run.error = {"cell": exc.exec_count, "ename": exc.ename, "evalue": str(exc.evalue)[:2000]}
    except Exception as exc:  # kernel death, timeouts, bad notebook JSON: still report it
        run.status = "failed"
        run.error = {"cell": None, "ename": type(exc).__name__, "evalue": str(exc)[:2000],
                     "traceback": traceback.format_exc()[-4000:]}
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    run.duration_s = round(time.monotonic() - start, 1)
    if out_nb.is_file():
        nb = nbformat.read(out_nb, as_version=4)
        run.metrics, run.finding = emit.collect(nb), emit.collect_finding(nb)
        run.figure = report_pages.write_key_figure(nb, out_dir / f"{path.stem}.png")
        report_pages.write_html(nb, out_dir / f"{path.stem}.html")
    return run


def record(run: NotebookRun, profile: str, meta: dict) -> dict:
    return {"notebook": run.stem, "status": run.status, "profile": profile, "duration_s": run.duration_s,
            "finding": run.finding, "figure": run.figure, "metrics": run.metrics, "error": run.error,
            "parameters": run.parameters, **meta}


def run_all(profile: str = "smoke", only: list[str] | None = None, overrides: dict[str, str] | None = None,
            out_dir: Path | None = None, write_record: bool | None = None,
            folder: Path = NOTEBOOKS_DIR, profiles_dir: Path = params.PROFILES_DIR) -> list[dict]:
    """The `python -m kdlib run` entry point; returns one record per notebook."""
    out_dir = Path(out_dir or reports_dir())
    todo = plan(profile, only, overrides or {}, folder, profiles_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"git": git_info(), "machine": machine_info(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    from kdlib.lab.setup import versions

    meta["versions"] = versions()
    records = []
    for path, values in todo.items():
        print(f"[kdlib] {path.stem}: running ({profile}) {values or ''}", flush=True)
        run = execute(path, values, out_dir, profile)
        rec = record(run, profile, meta)
        (out_dir / f"{path.stem}.json").write_text(json.dumps(rec, indent=1, default=str))
        print(f"[kdlib] {path.stem}: {run.status} in {run.duration_s:.0f} s"
              + (f" — {run.error['ename']}: {run.error['evalue'][:300]}" if run.error else ""), flush=True)
        records.append(rec)
    report_pages.write_index(out_dir)
    if write_record if write_record is not None else profile in RECORD_PROFILES:
        results = out_dir / "results" / profile
        results.mkdir(parents=True, exist_ok=True)
        for rec in records:
            if rec["status"] == "ok":
                (results / f"{rec['notebook']}.json").write_text(json.dumps(rec, indent=1, default=str) + "\n")
        report_pages.write_results_md(out_dir)
    return records


def main(args) -> int:
    try:
        overrides = params.parse_overrides(args.param or [])
        records = run_all(args.profile, args.only, overrides, args.reports_dir)
    except params.ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [r["notebook"] for r in records if r["status"] != "ok"]
    index = Path(args.reports_dir or reports_dir()) / "index.html"
    print(f"[kdlib] {len(records) - len(failed)}/{len(records)} notebooks ok; report: {index}")
    if failed:
        print(f"[kdlib] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
