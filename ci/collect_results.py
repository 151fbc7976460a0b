"""Collect the results.json of finished reproduction runs into one small, committed record.

    python ci/collect_results.py OUT.json RUN_DIR [RUN_DIR ...]
    python ci/collect_results.py --update OUT.json RUN_DIR [...]   # replace those runs in OUT, keep the others

Each RUN_DIR is a run's out_dir (holding results.json, as chapter 70's `run_csp` writes it). The record keeps what
the Experiments chapter plots and tabulates (parameters, sizes, match rate, RMSE, timings, environment) and drops
bulky fields (per-crystal lists, figure paths); the chapter reads it, so the book shows measured runs without the
runs themselves (which live under the ignored runs/ folder) being committed.
"""
import json
import sys
from pathlib import Path

KEEP = ("dataset", "model", "v0_scale", "parameterization", "mean_free", "t_f", "preset", "seed", "n_params", "n_train",
        "n_val", "n_test", "steps", "epochs", "val_loss_before", "val_loss_after", "final_train_loss", "protocol", "k",
        "match_rate", "rmse", "n_matched", "n_degenerate", "reasons", "sample_steps", "train_seconds", "sample_seconds",
        "metric_seconds", "prompt_fields", "text_kind", "encoder", "text_dim", "guidance_scale", "p_uncond", "environment",
        "match_rate_ungated", "rmse_ungated", "n_invalid", "volume_ratio", "time_grid", "train_source", "prompt_style",
        "n_same_composition", "test_rows")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    update = bool(argv) and argv[0] == "--update"
    argv = argv[1:] if update else argv
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, dirs = Path(argv[0]), [Path(a) for a in argv[1:]]
    rows = []
    for d in dirs:
        f = d / "results.json"
        if not f.is_file():
            print(f"error: {f} does not exist (did the run finish?)", file=sys.stderr)
            return 2
        r = json.loads(f.read_text())
        rows.append({"run_id": d.name, **{k: r[k] for k in KEEP if k in r}})
    for r in rows:                           # machine paths stay out of the committed record
        r.get("environment", {}).pop("platform", None)
    if update and out.is_file():             # the runs given replace their namesakes; the others stay, in order
        new = {r["run_id"]: r for r in rows}
        old = json.loads(out.read_text())["runs"]
        rows = [new.pop(r["run_id"], r) for r in old] + list(new.values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    print(f"wrote {len(rows)} runs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
