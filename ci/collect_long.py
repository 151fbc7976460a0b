"""Join the per-model JSON of `ci/long_run.py` into one committed record (chapters 72 and 73 read them).

    python ci/collect_long.py runs/perov5-long/*/long.json --out ci/results/perov_5-cpu-long.json
    python ci/collect_long.py runs/mp20-large/*/long.json --out ci/results/mp_20-cpu-large.json

The models of one record must share the dataset, the test crystals and the training source: a run trained on the
val substitute never shares a record with one trained on the train split."""
import argparse, json, math, statistics, sys
from pathlib import Path


def seed_summary(seeds: list) -> dict:
    "Mean and spread (sample standard deviation over seeds) of each per-seed figure."
    out = {}
    for key in ("match_rate", "match_rate_ungated", "rmse", "n_invalid", "volume_ratio_median"):
        vals = [s[key] for s in seeds if s.get(key) is not None]
        if not vals: continue
        out[key] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "min": min(vals), "max": max(vals), "n_seeds": len(vals)}
    return out


def read_record(
    path: Path,           # a run's JSON file
    fields: tuple,        # the fields it must hold
) -> dict:                # its content
    "A run's JSON record, with an error naming the file when it is missing, not JSON or lacks a field."
    if not path.is_file(): raise ValueError(f"{path}: no such file")
    try: r = json.loads(path.read_text())
    except json.JSONDecodeError as e: raise ValueError(f"{path}: not JSON ({e})") from None
    for key in fields:
        if key not in r: raise ValueError(f"{path}: missing field {key!r}")
    return r


def collect_long(paths: list) -> dict:
    "One record from the per-model files: same dataset and test split, at least one seed each."
    runs, dataset, n_test, source = {}, None, None, None
    for p in paths:
        p = Path(p)
        r = read_record(p, ("dataset", "model", "n_test", "seeds"))
        if not r["seeds"]: raise ValueError(f"{p}: no sampling seed finished")
        if dataset is not None and (r["dataset"], r["n_test"]) != (dataset, n_test):
            raise ValueError(f"{p}: {r['dataset']}/{r['n_test']} test crystals, the others {dataset}/{n_test}")
        src = r.get("train_source", "train")
        if source is not None and src != source:
            raise ValueError(f"{p}: trained on the {src} split, the others on the {source} split; a record never mixes them")
        if r["model"] in runs: raise ValueError(f"{p}: model {r['model']!r} given twice")
        dataset, n_test, source = r["dataset"], r["n_test"], src
        runs[r["model"]] = {**r, "summary": seed_summary(r["seeds"])}
    return {"dataset": dataset, "n_test": n_test, "train_source": source, "runs": runs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("records", nargs="+", type=Path, help="long.json of each model")
    p.add_argument("--out", type=Path, required=True, help="the joined record")
    a = p.parse_args(argv)
    try: rec = collect_long(a.records)
    except ValueError as e: sys.exit(f"collect_long.py: {e}")
    for r in rec["runs"].values():           # machine paths stay out of the committed record
        r.get("environment", {}).pop("platform", None)
    a.out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    for m, r in rec["runs"].items():
        s = r["summary"]["match_rate"]
        print(f"{m}: MR {100 * s['mean']:.2f} ± {100 * s['std']:.2f} over {s['n_seeds']} seeds")
    print(f"wrote {a.out}: {', '.join(rec['runs'])} on {rec['n_test']} {rec['dataset']} test crystals"
          + (" (TRAINED ON VAL)" if rec["train_source"] == "val" else ""))


if __name__ == "__main__":
    main()
