"""Run a papermill matrix: every run is a notebook with parameters; the executed notebook is its record.

    python ci/run_matrix.py ci/matrix-smoke.yaml [--jobs 2] [--out runs]

Runs execute in parallel (one process each, papermill's Python API: no CLI start-up per run).
A run's notebook may leave a JSON-serialisable dict in a variable named `results`; the driver
collects it with the parameters, wall time and status into `runs/<matrix>/results.json` and
`results.md`. A failed run is reported with its error and does not stop the others.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(nb: str, out: str, params: dict) -> dict:
    "Execute one run with papermill; return its record."
    import papermill as pm
    start = time.time()
    rec = {"notebook": nb, "output": out, "parameters": params}
    try:
        pm.execute_notebook(str(ROOT / nb), out, parameters=params, cwd=str(ROOT / "nbs"),
                            kernel_name="python3", progress_bar=False)
        rec["status"] = "ok"
    except Exception as e:
        rec["status"] = "failed"
        rec["error"] = f"{type(e).__name__}: {str(e)[-2000:]}"
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


def run_matrix(matrix: Path, out_root: Path, jobs: int = 2) -> list[dict]:
    "Execute every run of a matrix file; write and return the records."
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
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as ex:
        futs = [(r, ex.submit(_run, r["notebook"], str(out / f"{r['id']}.ipynb"), r.get("parameters", {})))
                for r in spec["runs"]]
        records = []
        for r, f in futs:
            try:
                rec = f.result()
            except Exception:
                rec = {"status": "failed", "error": traceback.format_exc()}
            rec["id"] = r["id"]
            records.append(rec)
            print(f"{rec['status']:6s} {r['id']:30s} {rec.get('seconds', 0):7.1f} s", flush=True)
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
    a = ap.parse_args()
    recs = run_matrix(a.matrix, a.out, a.jobs)
    bad = [r for r in recs if r["status"] != "ok"]
    print(f"{len(recs) - len(bad)} passed, {len(bad)} failed")
    sys.exit(1 if bad else 0)
