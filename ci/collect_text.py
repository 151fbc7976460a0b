"""Join the per-variant JSON of `ci/text_runs.py` into one committed record (chapters 61 and 62 read it).

    python ci/collect_text.py runs/text/tgdmat-*.json runs/text/kldm-text-*.json --out ci/results/perov_5-text-cpu.json

A variant is named by its file's stem. All variants must share the dataset, the preset and the test crystals; each
variant's samples are grouped by guidance scale and summarised over the sampling seeds (mean, sample SD, range)."""
import argparse, json, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect_long import read_record, seed_summary   # noqa: E402

SYMMETRY_KEYS = ("sg_prompt", "cs_prompt", "sg_truth", "cs_truth")


def flat_row(sample: dict) -> dict:
    "A sample's figures with its symmetry agreement flattened to keys like 'sg_prompt@0.1'."
    row = {k: v for k, v in sample.items() if k != "symmetry"}
    for sp, sym in sample.get("symmetry", {}).items():
        for k in SYMMETRY_KEYS: row[f"{k}@{sp}"] = sym[k]
    return row


def summarise(samples: list) -> dict:
    "Per guidance scale: the seeds' summary of the match-rate columns and of the symmetry agreement."
    out = {}
    for w in sorted({s["guidance_scale"] for s in samples}):
        rows = [flat_row(s) for s in samples if s["guidance_scale"] == w]
        summ = seed_summary(rows)
        for key in sorted({k for r in rows for k in r if "@" in k}):   # the same summary, one symmetry figure at a time
            summ[key] = seed_summary([{"match_rate": r[key]} for r in rows if key in r])["match_rate"]
        out[f"{w:g}"] = summ
    return out


def collect_text(paths: list) -> dict:
    "One record from the variants' files: same dataset, preset and test rows, at least one sample each."
    variants, ref = {}, None
    for p in map(Path, paths):
        r = read_record(p, ("dataset", "model", "preset", "test_rows", "samples"))
        if not r["samples"]: raise ValueError(f"{p}: no sample finished")
        key = (r["dataset"], r["preset"], r["test_rows"])
        if ref is not None and key != ref:
            raise ValueError(f"{p}: {r['dataset']}/{r['preset']}/{len(r['test_rows'])} test rows differ from the others'")
        if p.stem in variants: raise ValueError(f"{p}: variant {p.stem!r} given twice")
        ref = key
        r.get("environment", {}).pop("platform", None)      # machine paths stay out of the committed record
        variants[p.stem] = {**r, "summary": summarise(r["samples"])}
    return {"dataset": ref[0], "preset": ref[1], "n_test": len(ref[2]), "variants": variants}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("records", nargs="+", type=Path, help="the JSON of each variant")
    p.add_argument("--out", type=Path, required=True, help="the joined record")
    a = p.parse_args(argv)
    try: rec = collect_text(a.records)
    except ValueError as e: sys.exit(f"collect_text.py: {e}")
    a.out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    for name, v in rec["variants"].items():
        for w, s in v["summary"].items():
            m = s["match_rate"]
            print(f"{name} w={w}: MR {100 * m['mean']:.2f} ± {100 * m['std']:.2f} over {m['n_seeds']} seeds")
    print(f"wrote {a.out}: {len(rec['variants'])} variants on {rec['n_test']} {rec['dataset']} test crystals")


if __name__ == "__main__":
    main()
