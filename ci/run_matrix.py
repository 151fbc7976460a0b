"""Run a papermill matrix: every run is a notebook with parameters; the executed notebook is its record.

    python ci/run_matrix.py ci/matrix-smoke.yaml [--jobs 2] [--out runs]

Runs execute in parallel (one process each, papermill's Python API: no CLI start-up per run).
A run's notebook may leave a JSON-serialisable dict in a variable named `results`; the driver
collects it with the parameters, wall time and status into `runs/<matrix>/results.json` and
`results.md`. A failed run is reported with its error and does not stop the others.

Threads: runs executed side by side share the cores. Each kernel gets OMP_NUM_THREADS = cores // (runs at a time),
unless the caller set it, so `make reproduce`'s two jobs on 2 cores train with one thread each and a single run takes
both (chapter 50 measures what oversubscribing costs).

Progress: a run executes inside a Jupyter kernel, so the driver learns how far it is from files the run
writes. A run whose parameters name an `out_dir` is watched there: `progress.json` (the stage, written by
`reproduce.run_csp`: data, train, sampling, scoring, done) and, while it trains, the trainer's
`train/epochs.csv` (epoch k of n, k counted from 1, the loss; the ETA follows from the epochs' rate). On a terminal the
runs are tqdm bars, one per run; otherwise one line per stage and per tenth of training. `--quiet` prints
nothing but failures. The kernels run with `--log-level=ERROR`, so Jupyter's start-up warnings
("Kernel is running over TCP without encryption") do not reach the terminal.
"""
from __future__ import annotations

import csv
import json
import os
import random
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN_BAR = "{desc} {bar:20} {n_fmt}/{total_fmt} epochs [{elapsed}<{remaining}{postfix}]"
KERNEL_ARGS = ["--log-level=ERROR"]  # the kernel's own warnings stay out of the driver's terminal
KERNEL_START_TRIES = 3                # a kernel that fails to start (port race) is started again, at most this often
KERNEL_START_FAILURES = ("Kernel didn't respond", "Address already in use", "Kernel died before replying")


def job_threads(jobs: int, n_runs: int, cores: int | None = None) -> int:
    "Threads for each of the runs executed side by side: the cores shared among min(jobs, n_runs) of them, at least 1."
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, min(jobs, n_runs)))


def _run(nb: str, out: str, params: dict, threads: int | None = None) -> dict:
    "Execute one run with papermill (its kernel gets OMP_NUM_THREADS=threads unless the caller set it); return its record."
    import papermill as pm
    if threads and not os.environ.get("OMP_NUM_THREADS"):   # the kernel inherits it: torch and `default_threads` read it
        os.environ["OMP_NUM_THREADS"] = str(threads)
    start = time.time()
    rec = {"notebook": nb, "output": out, "parameters": params}
    for attempt in range(1, KERNEL_START_TRIES + 1):
        try:
            pm.execute_notebook(str(ROOT / nb), out, parameters=params, cwd=str(ROOT / "nbs"),
                                kernel_name="python3", progress_bar=False, extra_arguments=KERNEL_ARGS)
            rec["status"] = "ok"
            rec.pop("error", None)
            break
        except Exception as e:
            rec["status"] = "failed"
            rec["error"] = f"{type(e).__name__}: {str(e)[-2000:]}"
            if attempt == KERNEL_START_TRIES or not any(m in str(e) for m in KERNEL_START_FAILURES):
                break
            # two kernels started at once can pick the same free TCP port; the loser never answers: start it again
            rec["kernel_restarts"] = attempt
            time.sleep(random.uniform(0.5, 2.0))
    rec["seconds"] = round(time.time() - start, 2)
    rec["results"] = _results_of(out)
    return rec


def _results_of(path: str) -> dict:
    "The `results` dict a run printed as JSON on a line starting with RESULTS: (empty if none)."
    try:
        nb = json.loads(Path(path).read_text())
    except Exception:
        return {}
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            for line in "".join(o.get("text", "")).splitlines():
                if line.startswith("RESULTS:"):
                    return json.loads(line[len("RESULTS:"):])
    return {}


def run_state(out_dir) -> dict:
    "How far the run writing into `out_dir` is: its progress.json, plus the last row of train/epochs.csv while it trains."
    if not out_dir:
        return {}
    out_dir = Path(out_dir)
    try:
        state = json.loads((out_dir / "progress.json").read_text())
    except (OSError, ValueError):   # not written yet (or from a notebook that does not report)
        return {}
    if state.get("stage") == "train":
        state.update(last_epoch(out_dir) or {"epoch": 0})
    return state


def last_epoch(out_dir) -> dict:
    "The last row of the run's train/epochs.csv: epochs done (the trainer counts from 0), losses; {} if none yet."
    try:
        with open(Path(out_dir) / "train" / "epochs.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("epoch")]
    except OSError:
        return {}
    if not rows:
        return {}
    last, out = rows[-1], {}
    out["epoch"] = int(float(last["epoch"])) + 1
    for k in ("train_loss", "val_loss"):
        try:
            out[k] = float(last[k])
        except (KeyError, TypeError, ValueError):
            pass
    return out


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe(state: dict, eta: float | None = None) -> str:
    "One short phrase for a run's state: 'train epoch 3/100, loss 0.812, ETA 4:10'."
    stage = state.get("stage")
    if not stage:
        return "starting"
    if stage == "train":
        txt = f"train epoch {state.get('epoch', 0)}/{state.get('epochs', '?')}"
        if "train_loss" in state:
            txt += f", loss {state['train_loss']:.4g}"
        return txt + (f", ETA {_fmt_time(eta)}" if eta is not None else "")
    if stage in ("sampling", "scoring") and state.get("n_test"):
        return f"{stage} {state['n_test']} crystals"
    return stage


class MatrixProgress:
    "Shows every run's stage while a matrix executes: tqdm bars on a terminal, plain lines otherwise, or nothing."
    def __init__(self,
                 runs: list,          # the matrix's runs (id, parameters)
                 mode: str = "auto",  # "bars", "lines", "off", or "auto" (bars on a terminal, lines otherwise)
                 stream=None,         # where progress goes (default sys.stderr)
                ):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bars" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.runs = mode, runs
        self.seen = {r["id"]: None for r in runs}     # last phrase printed (lines mode)
        self.train0 = {}                              # run id -> (time, epoch) when training was first seen
        self.trained = set()                          # runs whose training was shown (lines mode)
        self.bars = {}
        self.width = max((len(r["id"]) for r in runs), default=10)
        if mode == "bars":
            from tqdm.auto import tqdm
            try:   # a terminal that reports no size (a bare pty) would hide every bar
                cols, rows = os.get_terminal_size(self.stream.fileno())
            except (AttributeError, OSError, ValueError):
                cols, rows = 0, 0
            size = dict(dynamic_ncols=True) if cols >= 40 and rows > len(runs) else dict(ncols=120, nrows=len(runs) + 2)
            self.bars = {r["id"]: tqdm(total=None, desc=f"{r['id'].ljust(self.width)}  queued", position=i,
                                       file=self.stream, leave=True, bar_format="{desc}", **size)
                         for i, r in enumerate(runs)}

    def eta(self, rid: str, state: dict) -> float | None:
        "Seconds left in training from the epochs done since training was first seen."
        if state.get("stage") != "train" or not state.get("epochs"):
            self.train0.pop(rid, None)
            return None
        k = state.get("epoch", 0)
        t0, k0 = self.train0.setdefault(rid, (time.time(), k))
        if k <= k0:
            return None
        return (state["epochs"] - k) * (time.time() - t0) / (k - k0)

    def update(self, rid: str, status: str, out_dir=None) -> None:
        "Refresh one run: status is 'queued', 'running', or its final status ('ok', 'failed')."
        if self.mode == "off":
            return
        state = run_state(out_dir) if status == "running" else {}
        phrase = describe(state, self.eta(rid, state)) if status == "running" else status
        if self.mode == "bars":
            b, name = self.bars[rid], rid.ljust(self.width)
            if state.get("stage") == "train" and state.get("epochs"):
                if b.total != state["epochs"]:
                    b.bar_format = TRAIN_BAR
                    b.reset(total=state["epochs"])
                    b.set_description_str(f"{name}  train", refresh=False)
                b.update(state.get("epoch", 0) - b.n)
                if "train_loss" in state:
                    b.set_postfix_str(f"loss {state['train_loss']:.4g}", refresh=False)
                b.refresh()
            else:
                if b.total is not None:
                    b.bar_format = "{desc}"
                    b.reset(total=None)
                b.set_description_str(f"{name}  {phrase}", refresh=True)
            return
        # lines: a stage change, or each tenth of the epochs, gives one line
        key = phrase
        if state.get("stage") == "train" and state.get("epochs"):
            key = f"train {10 * state.get('epoch', 0) // max(1, state['epochs'])}"
            self.trained.add(rid)
        elif state.get("stage") in ("sampling", "scoring", "done"):
            self._show_training(rid, out_dir)
        if key != self.seen.get(rid):
            self.seen[rid] = key
            print(f"{rid}: {phrase}", file=self.stream, flush=True)

    def _show_training(self, rid: str, out_dir) -> None:
        "Lines mode: a run's training ended between two polls; say once how it ended, before what came next."
        if rid in self.trained or not out_dir:
            return
        self.trained.add(rid)
        done = last_epoch(out_dir)
        if done:
            print(f"{rid}: {describe({'stage': 'train', 'epochs': done['epoch'], **done})} (done)",
                  file=self.stream, flush=True)

    def finish(self, rid: str, rec: dict, out_dir=None) -> None:
        "A run ended: its status and wall time (on its bar, or as a line)."
        phrase = f"{rec['status']}, {rec.get('seconds', 0):.1f} s"
        if self.mode == "lines":
            self._show_training(rid, out_dir)
        if self.mode == "bars":
            b = self.bars[rid]
            if b.total is not None:
                b.bar_format = "{desc}"
                b.reset(total=None)
            b.set_description_str(f"{rid.ljust(self.width)}  {phrase}", refresh=True)
        elif self.mode == "lines":
            print(f"{rid}: {phrase}", file=self.stream, flush=True)

    def close(self) -> None:
        for b in self.bars.values():
            b.close()


def run_matrix(matrix: Path, out_root: Path, jobs: int = 2, progress: str = "auto", poll: float = 1.0,
               only: list | None = None) -> list[dict]:
    "Execute every run of a matrix file (or the runs whose ids `only` lists), showing each run's stage; write and return the records."
    spec = yaml.safe_load(Path(matrix).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list):
        raise ValueError(f"{matrix}: expected a mapping with a `runs` list")
    out = out_root / spec.get("name", Path(matrix).stem)
    out.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(spec["runs"]):
        for k in ("id", "notebook"):
            if k not in r:
                raise ValueError(f"{matrix}: run {i} has no `{k}`")
        if not (ROOT / r["notebook"]).exists():
            raise ValueError(f"{matrix}: run {r['id']}: notebook {r['notebook']} does not exist")
    runs = spec["runs"]
    if only:
        unknown = sorted(set(only) - {r["id"] for r in runs})
        if unknown: raise ValueError(f"{matrix}: --only names runs it does not hold: {unknown}")
        runs = [r for r in runs if r["id"] in set(only)]
    for r in runs:   # a progress record from an earlier execution is not this one's
        od = (r.get("parameters") or {}).get("out_dir")
        if od:
            (Path(od) / "progress.json").unlink(missing_ok=True)
    view = MatrixProgress(runs, progress)
    done = {}
    threads = job_threads(jobs, len(runs))   # side-by-side runs share the cores instead of each taking them all
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as ex:
            futs = {ex.submit(_run, r["notebook"], str(out / f"{r['id']}.ipynb"), r.get("parameters", {}), threads): r
                    for r in runs}
            pending = set(futs)
            while pending:
                finished, pending = wait(pending, timeout=poll, return_when=FIRST_COMPLETED)
                for f in finished:
                    r = futs[f]
                    try:
                        rec = f.result()
                    except Exception:
                        rec = {"status": "failed", "error": traceback.format_exc()}
                    rec["id"] = r["id"]
                    done[r["id"]] = rec
                    view.finish(r["id"], rec, (r.get("parameters") or {}).get("out_dir"))
                    if rec["status"] != "ok" and progress == "off":
                        print(f"{r['id']}: failed: {str(rec.get('error', ''))[-300:]}", file=sys.stderr)
                for f in pending:
                    r = futs[f]
                    view.update(r["id"], "running" if f.running() else "queued", (r.get("parameters") or {}).get("out_dir"))
    finally:
        view.close()
    records = [done[r["id"]] for r in runs]
    (out / "results.json").write_text(json.dumps(records, indent=1))
    lines = ["| run | status | seconds | parameters |", "|---|---|---|---|"]
    lines += [f"| {r['id']} | {r['status']} | {r.get('seconds', '')} | {json.dumps(r.get('parameters', {}))} |" for r in records]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return records


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("matrix", type=Path)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs")
    ap.add_argument("--quiet", action="store_true", help="print nothing but failures")
    ap.add_argument("--only", default="", help="comma-separated run ids: run only these (default: all)")
    a = ap.parse_args()
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    recs = run_matrix(a.matrix, a.out, a.jobs, progress="off" if a.quiet else "auto", only=only)
    bad = [r for r in recs if r["status"] != "ok"]
    if not a.quiet:
        print(f"{len(recs) - len(bad)} passed, {len(bad)} failed")
    sys.exit(1 if bad else 0)
