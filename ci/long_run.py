"""One long CPU run of one model: train the preset's network to `--epochs` (resuming the run folder if it holds a
checkpoint), then sample the preset's test crystals once per sampling seed with `CPU_LONG_SAMPLER` and score every
sample with all the columns a match rate hides (ungated twin, invalid count, predicted/true volume).

    # chapter 72: Perov-5, the whole test split
    OMP_NUM_THREADS=1 python ci/long_run.py --model diffcsp --epochs 500 --run-dir runs/perov5-long/diffcsp \
        --seeds 0 1 2 --out runs/perov5-long/diffcsp/long.json
    # chapter 73: MP-20 at the cpu-large preset (trained on the val substitute where the train split is absent)
    OMP_NUM_THREADS=1 python ci/long_run.py --preset cpu-large --dataset mp_20 --model kldm \
        --run-dir runs/mp20-large/kldm --out runs/mp20-large/kldm/long.json

`ci/collect_long.py` joins the models' JSON into one committed record (`ci/results/<dataset>-<preset>.json`).
    # best of k = 20 (DiffCSP's k = 20 column): k samples per test crystal, seeds 0..k-1, kept on disk as they come
    OMP_NUM_THREADS=1 python ci/long_run.py --model diffcsp --run-dir runs/perov5-long/diffcsp --k 20 \
        --out runs/perov5-long/diffcsp/k20.json

One network per model (training seed 0); the seeds are sampling seeds. Progress goes to stdout, one line per stage.
With `--k K` the k sampling seeds' structures are saved under run-dir/kK/ (a rerun resumes after the last saved seed) and
scored once, best of k, under the `diffcsp_multi` protocol (its result carries the ungated twin)."""
import argparse, gzip, json, math, time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from crystal_diffusion_book.nfe import score_predictions
from crystal_diffusion_book.reproduce import (CPU_LONG_SAMPLER, TRAIN_SOURCES, _fmt, build_model, environment, get_preset,
                                              load_csp_data, resolve_train_source, sample_csp, train_config)
from crystal_diffusion_book.train import default_threads, train, validation_loss


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def training_log(epochs_csv: Path, marks=(25, 50, 100, 150, 200, 300, 400, 500)) -> dict:
    """From the trainer's epoch log: the validation loss at a few epochs (to say whether the run had converged), the
    wall seconds of the whole training, the final learning rate and the epochs where it dropped. The log's `seconds`
    count from the start of each trainer call, so a resumed run restarts them: the total adds up every segment."""
    ep = pd.read_csv(epochs_csv)                 # epoch is 0-based: the m-th epoch is row epoch == m - 1
    curve = {}
    for m in (*marks, int(ep["epoch"].max()) + 1):
        row = ep[ep["epoch"] == m - 1]
        if len(row): curve[str(m)] = float(row["val_loss"].iloc[0])
    sec = ep["seconds"].astype(float).tolist()
    total = sum(a for a, b in zip(sec, sec[1:]) if b < a) + sec[-1]     # each segment's last time, then the running one
    return {"val_loss_at_epoch": curve, "train_seconds": total, "train_segments": 1 + sum(b < a for a, b in zip(sec, sec[1:])),
            "lr_final": float(ep["lr"].iloc[-1]),
            "lr_drops_at_epoch": [int(e) + 1 for e, a, b in zip(ep["epoch"][1:], ep["lr"][:-1], ep["lr"][1:]) if b < a]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(CPU_LONG_SAMPLER), required=True)
    p.add_argument("--dataset", default="perov_5")
    p.add_argument("--preset", default="cpu-long", choices=["cpu-long", "cpu-large", "smoke"], help="the run's scale")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--train-source", choices=TRAIN_SOURCES, default=None,
                   help="train split, val substitute, or auto (default: the preset's)")
    p.add_argument("--run-dir", type=Path, required=True, help="the run folder (train/ inside is resumed)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    p.add_argument("--n-test", type=int, default=None, help="test crystals (default: the preset's)")
    p.add_argument("--k", type=int, default=1, help="samples per test crystal, scored best of k (default 1: per seed)")
    p.add_argument("--out", type=Path, required=True, help="JSON written after every seed")
    a = p.parse_args(argv)
    if a.epochs is not None and a.epochs < 1: p.error(f"--epochs must be positive, got {a.epochs}")
    if a.k < 1: p.error(f"--k must be positive, got {a.k}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    kw = dict(CPU_LONG_SAMPLER[a.model])
    n_steps = kw.pop("n_steps")
    run = get_preset(a.preset, epochs=a.epochs, n_test=a.n_test, sample_steps=n_steps, train_source=a.train_source)
    source = resolve_train_source(a.dataset, run.train_source)
    torch.set_num_threads(run.threads or default_threads())
    t0 = time.perf_counter()
    train_data, val_data, test_data, test_idx = load_csp_data(a.dataset, replace(run, train_source=source), seed=0)
    log(f"data: train {len(train_data)}, val {len(val_data)}, test {len(test_data)} ({time.perf_counter() - t0:.0f} s)"
        + ("; TRAINED ON VAL (the train split is not present): the val split minus a held-out slice" if source == "val" else ""))
    torch.manual_seed(0)
    net = build_model(a.model, run, a.dataset, train_data=train_data)
    cfg = train_config(a.model, run, seed=0)
    t0 = time.perf_counter()
    res = train(net, train_data, val_data, cfg, out_dir=a.run_dir / "train", resume=True)
    train_seconds = time.perf_counter() - t0
    net.eval()
    val = validation_loss(net, val_data, batch_size=256, seed=0)["loss"]
    log(f"trained to epoch {res['epoch']} (this call {train_seconds:.0f} s); validation loss {val:.4f}")
    record = {"dataset": a.dataset, "model": a.model, "preset": run.name, "train_source": source,
              "epochs": int(res["epoch"]),
              "steps": int(res["step"]), "n_params": sum(q.numel() for q in net.parameters()),
              "n_train": len(train_data), "n_val": len(val_data), "n_test": len(test_data), "test_rows": test_idx,
              "atoms_per_cell_mean": sum(d.num_nodes for d in train_data) / len(train_data),
              "sampler": {"n_steps": n_steps, **kw}, "val_loss": val,
              **training_log(a.run_dir / "train" / "epochs.csv"),
              "train_seed": 0, "environment": environment(), "seeds": []}
    if a.k > 1: return best_of_k(net, test_data, run, kw, a, record)
    for seed in a.seeds:
        t0 = time.perf_counter()
        preds = sample_csp(net, test_data, run, seed=seed, progress=lambda k, n: log(f"seed {seed}: sampled {k}/{n}"), **kw)
        sec = time.perf_counter() - t0
        row = {"seed": seed, **score_predictions(preds, test_data, sec)}
        record["seeds"].append(row)
        a.out.write_text(json.dumps(record, indent=1, default=str))
        log(f"seed {seed}: MR {100 * row['match_rate']:.2f} ± {100 * row['match_rate_se']:.2f}, ungated "
            f"{100 * row['match_rate_ungated']:.2f}, RMSE {_fmt(row['rmse'], 4)}, invalid {row['n_invalid']}, "
            f"V/V0 {_fmt(row['volume_ratio_median'], 3)} ({sec:.0f} s)")
    mrs = [r["match_rate"] for r in record["seeds"]]
    log(f"mean MR {100 * sum(mrs) / len(mrs):.2f} over {len(mrs)} seeds")


def best_of_k(net, test_data, run, kw, a, record):
    "Sample seeds 0..k-1 (each saved as it finishes; saved ones are read back), then score best of k once."
    from pymatgen.core import Structure
    from crystal_diffusion_book.metrics import csp_metrics, free_cores
    folder = a.run_dir / f"k{a.k}"
    folder.mkdir(parents=True, exist_ok=True)
    draws, seconds = [], 0.0
    for seed in range(a.k):
        path = folder / f"seed_{seed}.json.gz"
        if path.exists():
            saved = json.loads(gzip.decompress(path.read_bytes()))
            if len(saved) != len(test_data): raise ValueError(f"{path}: {len(saved)} structures, expected {len(test_data)}")
            draws.append([Structure.from_dict(d) if d else None for d in saved])
            log(f"seed {seed}: read {path.name}")
            continue
        t0 = time.perf_counter()
        preds = sample_csp(net, test_data, run, seed=seed, **kw)
        seconds += time.perf_counter() - t0
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(json.dumps([s.as_dict() if s is not None else None for s in preds]).encode()))
        tmp.replace(path)                        # a killed run never leaves a half-written seed behind
        draws.append(preds)
        log(f"seed {seed}: sampled and saved ({time.perf_counter() - t0:.0f} s)")
    per_crystal = [[d[i] for d in draws] for i in range(len(test_data))]   # (n_test, k)
    t0 = time.perf_counter()
    # one pass: the result carries its ungated twin (same matcher, no validity gate); 2 processes unless cores are busy
    m = csp_metrics(per_crystal, test_data, protocol="diffcsp_multi", n_procs=max(2, free_cores()), progress=True)
    record.update(k=a.k, protocol="diffcsp_multi", match_rate=m.match_rate,
                  match_rate_se=math.sqrt(m.match_rate * (1 - m.match_rate) / len(test_data)), rmse=m.rmse,
                  match_rate_ungated=m.match_rate_ungated, rmse_ungated=m.rmse_ungated, n_matched=m.n_matched, n_invalid=m.n_invalid,
                  reasons=m.reasons, volume_ratio=m.volume_ratio, sample_seconds_this_call=seconds,
                  metric_seconds=time.perf_counter() - t0)
    a.out.write_text(json.dumps(record, indent=1, default=str))
    log(f"best of {a.k}: MR {100 * m.match_rate:.2f}, RMSE {_fmt(m.rmse, 4)}, ungated {100 * m.match_rate_ungated:.2f}, "
        f"invalid {m.n_invalid} ({record['metric_seconds']:.0f} s to score)")


if __name__ == "__main__":
    main()
