"""Execute the book's chapters in their quick tier, with nbdev's test semantics, into a build folder.

One notebook runs in one fresh process (isolation, and two at a time on two cores). Cells flagged
with a skip flag (`#| slow`, `#| gpu`, from `tst_flags` in pyproject.toml) are not run, exactly as
`nbdev-test` skips them; the executed copy records which cells were skipped so the book can say so.
Executed copies go to `_build/executed/`, never back into `nbs/`. A copy is reused while the
notebook, the package sources and the flags are unchanged (a content hash), so the notebook tests
and the book build execute each chapter once.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
OUT = ROOT / "_build" / "executed"
SKIP_META = "cdb_skipped"  # cell metadata key: this cell was not run in the quick tier


@dataclass
class NbResult:
    "The outcome of executing one notebook."
    name: str            # notebook file name, e.g. 10_torus.ipynb
    ok: bool             # every executed cell ran without an exception
    seconds: float       # wall time of the execution
    error: str = ""      # the traceback when not ok
    executed: str = ""   # path of the executed copy
    cached: bool = False # reused from an earlier run with the same inputs
    n_cells: int = 0     # code cells executed
    n_skipped: int = 0   # code cells skipped by flag


def default_flags() -> list[str]:
    "The skip flags from `tst_flags` in pyproject.toml."
    import tomllib
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(cfg["tool"]["nbdev"].get("tst_flags", "")).split()


def notebooks(pattern: str = "[0-9]*.ipynb") -> list[Path]:
    "The chapter notebooks, in reading order."
    return sorted(NBS.glob(pattern))


def cache_key(nb: Path, skip_flags, force_flags) -> str:
    "A hash of everything an execution depends on: the notebook, the package sources, the flags."
    h = hashlib.sha256()
    h.update(nb.read_bytes())
    for p in sorted((ROOT / "crystal_diffusion_book").rglob("*.py")):
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    h.update(json.dumps([sorted(skip_flags), sorted(force_flags)]).encode())
    return h.hexdigest()


def _execute(nb_path: str, skip_flags: list[str], force_flags: list[str], key: str) -> NbResult:
    "Run one notebook in this (fresh) process and write the executed copy."
    os.environ["IN_TEST"] = "1"
    from fastcore.nbio import write_nb
    from nbdev.process import NBProcessor
    from nbdev.test import _skip_cell  # the predicate nbdev-test itself uses
    from execnb.shell import CaptureShell

    fn = Path(nb_path)
    OUT.mkdir(parents=True, exist_ok=True)
    dest = OUT / fn.name
    nb = NBProcessor(fn, rm_directives=False, process=True).nb
    skip = _skip_cell(nb, skip_flags, force_flags)
    code = [c for c in nb.cells if c.cell_type == "code"]
    skipped = [c for c in code if skip(c)]
    for c in skipped:
        c.metadata[SKIP_META] = True
    sys.path.insert(0, str(ROOT))
    start, ok, err = time.time(), True, ""
    shell = CaptureShell(fn)
    cwd = os.getcwd()
    try:
        os.chdir(fn.parent)
        shell.run_all(nb, exc_stop=True, preproc=skip)
    except BaseException:
        ok = False
        err = shell.prettytb(fname=fn) or traceback.format_exc()
    finally:
        os.chdir(cwd)
    seconds = time.time() - start
    for c in nb.cells:  # drop execnb's private bookkeeping, keep outputs
        c.pop("idx_", None)
        c.pop("directives_", None)
    tmp = dest.with_suffix(".tmp")
    write_nb(nb, tmp)
    tmp.replace(dest)
    res = NbResult(fn.name, ok, seconds, err, str(dest), False, len(code) - len(skipped), len(skipped))
    (OUT / (fn.stem + ".json")).write_text(json.dumps({"key": key, **asdict(res)}, indent=1))
    return res


def _cached(nb: Path, key: str) -> NbResult | None:
    "The stored result for `nb` when it was executed with the same inputs and succeeded."
    meta = OUT / (nb.stem + ".json")
    if not meta.exists() or not (OUT / nb.name).exists():
        return None
    d = json.loads(meta.read_text())
    if d.pop("key") != key or not d["ok"]:
        return None
    d["cached"] = True
    return NbResult(**d)


def run_all(
    paths=None,          # notebooks to run (default: every chapter)
    jobs: int = 2,       # notebooks executed at the same time
    flags: str = "",     # space-separated flags to run although normally skipped (e.g. "slow")
    use_cache: bool = True,  # reuse executed copies whose inputs are unchanged
    verbose: bool = True,    # print one line per notebook
) -> dict[str, NbResult]:
    "Execute notebooks in parallel, one fresh process each; return results by file name."
    paths = [Path(p) for p in (paths or notebooks())]
    force = flags.split()
    skip = default_flags()
    results: dict[str, NbResult] = {}
    todo = []
    for p in paths:
        key = cache_key(p, skip, force)
        hit = _cached(p, key) if use_cache else None
        if hit:
            results[p.name] = hit
        else:
            todo.append((p, key))
    # each worker gets its share of the cores, so parallel notebooks do not oversubscribe them
    threads = str(max(1, (os.cpu_count() or 2) // max(1, jobs)))
    env_backup = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND")}
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, MPLBACKEND="module://matplotlib_inline.backend_inline")
    try:
        if todo:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1) as ex:
                futs = {ex.submit(_execute, str(p), skip, force, key): p for p, key in todo}
                for f in futs:
                    p = futs[f]
                    try:
                        res = f.result()
                    except BaseException:
                        res = NbResult(p.name, False, 0.0, traceback.format_exc())
                    results[p.name] = res
                    if verbose:
                        print(f"{'ok  ' if res.ok else 'FAIL'} {p.name:32s} {res.seconds:6.1f} s  "
                              f"({res.n_cells} cells run, {res.n_skipped} skipped by flag)", flush=True)
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {p.name: results[p.name] for p in paths}


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Execute the chapters (quick tier) into _build/executed/.")
    ap.add_argument("paths", nargs="*", help="notebooks (default: all chapters)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--flags", default="", help='flags to run too, e.g. "slow"')
    ap.add_argument("--no-cache", action="store_true")
    a = ap.parse_args()
    res = run_all(a.paths or None, a.jobs, a.flags, not a.no_cache)
    bad = [r for r in res.values() if not r.ok]
    for r in bad:
        print(f"\n=== {r.name} ===\n{r.error}", file=sys.stderr)
    print(f"{len(res) - len(bad)} passed, {len(bad)} failed")
    sys.exit(1 if bad else 0)
