"""Tests of crystal_diffusion_book.data: edges, collate, the dataset store, fetch/verify/cache against a
local HTTP server, bad rows, and (when the shared mirror exists) the real benchmark files."""
import functools
import gzip
import hashlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystal_diffusion_book import data as D

# the shared copy of the benchmark files: $CDB_DATA_MIRROR, else ../shared/data beside the checkout
MIRROR = Path(os.environ.get("CDB_DATA_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data")
HAVE_MIRROR = (MIRROR / "perov_5" / "test.csv.gz").exists()


# ---------------------------------------------------------------- edges and batches
def _naive_edges(ns, self_loops):
    out, s = [], 0
    for n in ns:
        out += [(s + i, s + j) for i in range(n) for j in range(n) if self_loops or i != j]
        s += n
    return torch.tensor(out, dtype=torch.long).T.reshape(2, -1)


@pytest.mark.parametrize("self_loops", [True, False])
def test_fully_connected_edges_matches_naive(self_loops):
    rng = np.random.default_rng(1)
    for _ in range(30):
        ns = rng.integers(1, 12, size=rng.integers(1, 9)).tolist()
        assert torch.equal(D.fully_connected_edges(torch.tensor(ns), self_loops), _naive_edges(ns, self_loops))


def test_fully_connected_edges_counts_and_errors():
    n = torch.tensor([5, 1, 20])
    assert D.fully_connected_edges(n, True).shape == (2, 25 + 1 + 400)
    assert D.fully_connected_edges(n, False).shape == (2, 20 + 0 + 380)
    assert D.fully_connected_edges(torch.tensor([], dtype=torch.long)).shape == (2, 0)
    with pytest.raises(ValueError, match="num_atoms"):
        D.fully_connected_edges(torch.tensor([3, -1]))


def test_collate_layout():
    ds = D.synthetic_dataset(12, seed=3)
    b = D.collate([ds[i] for i in range(5)], self_loops=False)
    n = b.num_atoms
    assert b.lattice.shape == (5, 3, 3) and b.lengths.shape == (5, 3) and b.angles.shape == (5, 3)
    assert b.frac_coords.shape == (int(n.sum()), 3) and b.frac_coords.dtype == torch.float64
    assert torch.equal(b.ptr, torch.cat([torch.zeros(1, dtype=torch.long), n.cumsum(0)]))
    src, dst = b.edge_index
    assert torch.equal(b.batch[src], b.batch[dst]) and not (src == dst).any()
    assert b.edge_index.shape[1] == int((n * (n - 1)).sum())
    with pytest.raises(ValueError, match="data_list"):
        D.collate([])


def test_loader_iterates_all():
    ds = D.synthetic_dataset(30, seed=0)
    seen = sum(b.num_graphs for b in D.make_loader(ds, batch_size=7, shuffle=True))
    assert seen == 30
    with pytest.raises(ValueError, match="batch_size"):
        D.make_loader(ds, batch_size=0)


# ---------------------------------------------------------------- synthetic set and store
def test_synthetic_deterministic_and_fields():
    a, b = D.synthetic_dataset(40, seed=7), D.synthetic_dataset(40, seed=7)
    assert [d.material_id for d in a] == [d.material_id for d in b]
    assert torch.equal(a.store["frac_coords"], b.store["frac_coords"])
    d = a[0]
    assert d.frac_coords.dtype == torch.float64 and d.atom_types.dtype == torch.long
    assert d.lattice.shape == (1, 3, 3) and d.num_atoms.shape == (1,) and d.num_nodes == int(d.num_atoms)
    f = a.store["frac_coords"]
    assert float(f.min()) >= 0 and float(f.max()) < 1
    vol = torch.linalg.det(a.store["lattice"]) / a.store["num_atoms"]
    assert torch.allclose(vol, a.store["properties"]["volume_per_atom"], rtol=1e-10)
    with pytest.raises(ValueError, match="n must"):
        D.synthetic_dataset(0)


def test_store_roundtrip(tmp_path):
    ds = D.synthetic_dataset(25, seed=1)
    ds.save(tmp_path / "x.pt")
    back = D.CrystalDataset.load(tmp_path / "x.pt")
    assert len(back) == 25
    for i in (0, 13, 24):
        for k in ("frac_coords", "atom_types", "lattice", "lengths", "angles", "num_atoms", "volume_per_atom"):
            assert torch.equal(ds[i][k], back[i][k])
        assert ds[i].material_id == back[i].material_id
    with pytest.raises(IndexError):
        back[25]


def test_structure_roundtrip():
    s = Structure(Lattice.from_parameters(3, 4, 5, 80, 95, 100), ["Na", "Cl", "O"],
                  [[0.1, 0.2, 0.3], [0.6, 0.5, 0.9], [0.99999999999, 0.0, 0.5]])
    c = D.canonicalise(s)
    back = D.data_to_structure(D.structure_to_data(c))
    assert np.allclose(back.lattice.matrix, c.lattice.matrix, atol=1e-12)
    assert abs(c.volume - s.volume) < 1e-9 * s.volume
    assert np.abs(c.distance_matrix - s.distance_matrix).max() < 1e-8


# ---------------------------------------------------------------- fixtures: a toy CSV and a registry
def _toy_csv(n=6):
    ds = D.synthetic_dataset(n, seed=5)
    rows = [{"material_id": d.material_id, "cif": D.cif_text(D.data_to_structure(d)),
             "prop": float(d.volume_per_atom)} for d in ds]
    return pd.DataFrame(rows).to_csv().encode()


def _registry(raw, urls=(), mirror_paths=("toy/test.csv",)):
    f = D.SplitFile("toy", "test", "cdvae", "CDVAE", raw.count(b"\n") - 1, hashlib.sha256(raw).hexdigest(),
                    len(raw), tuple(urls), True, tuple(mirror_paths))
    return D.Registry({"toy": D.DatasetInfo("toy", 20, ("prop",), "test only")}, (f,))


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path.startswith("/cut/"):  # announce the whole file, send half of it, hang up
            body = (Path(self.directory) / self.path[len("/cut/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        return super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_verify_cache(server, tmp_path):
    root, base = server
    raw = _toy_csv()
    (root / "toy").mkdir()
    (root / "toy" / "test.csv").write_bytes(raw)
    reg = _registry(raw, urls=(f"{base}/toy/test.csv",))
    cache = tmp_path / "cache"
    p, f = D.fetch_entry("toy", "test", cache_dir=cache, mirror="", registry=reg)
    assert p.read_bytes() == raw and f.variant == "cdvae" and p.parent.parent.parent == cache
    (root / "toy" / "test.csv").unlink()  # gone upstream: the cache must serve it, with no request
    assert D.fetch("toy", "test", cache_dir=cache, mirror="", registry=reg, download=False) == p
    ds = D.load_dataset("toy", "test", cache_dir=cache, mirror="", registry=reg, progress=False)
    assert len(ds) == 6 and ds[0].prop.dtype == torch.float64


def test_mirror_url_gzip(server, tmp_path):
    root, base = server
    raw = _toy_csv()
    (root / "toy").mkdir()
    (root / "toy" / "test.csv.gz").write_bytes(gzip.compress(raw))
    reg = _registry(raw)
    p = D.fetch("toy", "test", cache_dir=tmp_path / "c", mirror=base, registry=reg, download=False)
    assert p.read_bytes() == raw


def test_truncated_download_refused(server, tmp_path):
    root, base = server
    raw = _toy_csv()
    (root / "toy").mkdir()
    (root / "toy" / "test.csv").write_bytes(raw)
    reg = _registry(raw, urls=(f"{base}/cut/toy/test.csv",))
    with pytest.raises(D.MissingSplitError, match="truncated"):
        D.fetch("toy", "test", cache_dir=tmp_path / "c", mirror="", registry=reg)
    assert not list((tmp_path / "c" / "raw" / "toy").glob("*.csv"))


def test_truncated_gzip_refused(server, tmp_path):
    root, base = server
    raw = _toy_csv()
    (root / "toy").mkdir()
    gz = gzip.compress(raw)
    (root / "toy" / "test.csv.gz").write_bytes(gz[: len(gz) * 2 // 3])  # a short file, served whole
    with pytest.raises(D.MissingSplitError, match="truncated or corrupt gzip"):
        D.fetch("toy", "test", cache_dir=tmp_path / "c", mirror=base, registry=_registry(raw), download=False)


def test_wrong_checksum_refused(server, tmp_path):
    root, base = server
    raw = _toy_csv()
    (root / "toy").mkdir()
    bad = raw.replace(b"synthetic", b"synthetiK", 1)
    (root / "toy" / "test.csv").write_bytes(bad)
    reg = _registry(raw, urls=(f"{base}/toy/test.csv",))
    with pytest.raises(D.ChecksumError) as e:
        D.fetch("toy", "test", cache_dir=tmp_path / "c", mirror="", registry=reg)
    msg = str(e.value)
    assert hashlib.sha256(raw).hexdigest() in msg and hashlib.sha256(bad).hexdigest() in msg
    assert not list((tmp_path / "c" / "raw" / "toy").glob("*.csv"))


def test_missing_split_message(tmp_path):
    reg = _registry(b"a\n1\n")
    with pytest.raises(D.MissingSplitError) as e:
        D.fetch("toy", "test", cache_dir=tmp_path / "c", mirror=tmp_path / "m", registry=reg)
    msg = str(e.value)
    assert str(tmp_path / "m" / "toy" / "test.csv.gz") in msg and "CDB_DATA_MIRROR" in msg
    with pytest.raises(ValueError, match="dataset must be"):
        D.fetch("nope", "test", registry=reg)


def test_damaged_cache_file_is_replaced(tmp_path):
    raw = _toy_csv()
    (tmp_path / "m" / "toy").mkdir(parents=True)
    (tmp_path / "m" / "toy" / "test.csv").write_bytes(raw)
    reg = _registry(raw)
    p = D.fetch("toy", "test", cache_dir=tmp_path / "c", mirror=tmp_path / "m", registry=reg)
    p.write_bytes(raw[:-10])
    assert D.fetch("toy", "test", cache_dir=tmp_path / "c", mirror=tmp_path / "m", registry=reg).read_bytes() == raw


def test_processed_cache_is_used(tmp_path, monkeypatch):
    raw = _toy_csv()
    (tmp_path / "m" / "toy").mkdir(parents=True)
    (tmp_path / "m" / "toy" / "test.csv").write_bytes(raw)
    kw = dict(cache_dir=tmp_path / "c", mirror=tmp_path / "m", registry=_registry(raw), progress=False)
    a = D.load_dataset("toy", "test", **kw)
    monkeypatch.setattr(D, "_parse_rows", lambda *a, **k: pytest.fail("parsed again"))
    b = D.load_dataset("toy", "test", **kw)
    assert torch.equal(a.store["frac_coords"], b.store["frac_coords"])
    assert len(list((tmp_path / "c" / "processed").glob("toy_test_*.pt"))) == 1
    with pytest.raises(pytest.fail.Exception):  # other options, other key: parses again
        D.load_dataset("toy", "test", limit=3, **kw)


# ---------------------------------------------------------------- bad rows
def _site_line(cif, el):
    return [l for l in cif.splitlines() if l.strip().startswith(el + " ")][0]


def _bad_cases():
    good = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ok = D.cif_text(good)
    cl = _site_line(ok, "Cl")
    return {
        "empty": ("", "empty CIF"),
        "malformed": ("data_x\n_cell_length_a 4\nnot a cif at all", "malformed CIF"),
        "flat": (ok.replace("_cell_angle_gamma   90.00000000", "_cell_angle_gamma   180.00000000"),
                 "zero or negative volume"),
        "negative": (ok.replace("_cell_length_b   4.20000000", "_cell_length_b   -4.20000000"),
                     "zero or negative volume"),
        "unknown": (ok.replace(cl, cl.replace("Cl ", "Qq ", 1)), "unknown element"),
        "beyond100": (ok.replace(cl, cl.replace("Cl ", "Og ", 1)), "unknown element"),
        "partial": (ok.replace(cl, cl[: cl.rstrip().rfind(" ")] + " 0.5"), "partial occupancy"),
        "duplicate": (ok.replace(cl, cl + "\n" + cl.replace("Cl1", "Cl7")), "duplicate sites"),
        "close": (ok.replace(cl, cl + "\n" + cl.replace("Cl1", "Cl7").replace("0.50000000", "0.51000000", 1)),
                  "duplicate sites"),
        "toobig": (D.cif_text(good * (2, 2, 3)), "more than the dataset maximum 20"),
    }


def _write(tmp_path, rows, cols=("material_id", "cif", "prop")):
    df = pd.DataFrame(rows, columns=["material_id", "cif", "prop"])[list(cols)]
    p = tmp_path / "rows.csv"
    p.write_text(df.to_csv())
    return p


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_each_bad_row_raises_with_file_row_id(tmp_path, case):
    cif, why = _bad_cases()[case]
    ok = D.cif_text(Structure(Lattice.cubic(4.0), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    p = _write(tmp_path, [("good-0", ok, 1.0), (f"id-{case}", cif, 2.0)])
    with pytest.raises(D.DataRowError) as e:
        D.load_dataset("mp_20", "test", path=p, properties=["prop"], use_cache=False, progress=False)
    err = e.value
    assert err.row == 1 and err.material_id == f"id-{case}" and why in err.reason
    assert str(p) in str(err) and f"id-{case}" in str(err) and "row 1" in str(err)


def test_skip_reports_every_bad_row(tmp_path):
    ok = D.cif_text(Structure(Lattice.cubic(4.0), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    cases = _bad_cases()
    rows = [("good-0", ok, 1.0)] + [(f"id-{k}", c, 2.0) for k, (c, _) in cases.items()]
    rows += [("id-nan", ok, float("nan")), (float("nan"), ok, 1.0), ("good-1", ok, 3.0)]
    p = _write(tmp_path, rows)
    with pytest.warns(UserWarning, match=f"skipped {len(cases) + 2} of {len(rows)}"):
        ds = D.load_dataset("mp_20", "test", path=p, properties=["prop"], errors="skip", use_cache=False,
                            progress=False)
    assert [d.material_id for d in ds] == ["good-0", "good-1"]
    rep = ds.report()
    assert len(rep) == len(cases) + 2 and set(rep.file) == {str(p)}
    why = dict(zip(rep.material_id, rep.reason))
    for k, (_, expected) in cases.items():
        assert expected in why[f"id-{k}"]
    assert "NaN field" in why["id-nan"] and "material_id" in why["<missing>"]
    assert list(rep.row) == list(range(1, len(rows) - 1))


def test_missing_column_refuses_file(tmp_path):
    ok = D.cif_text(Structure(Lattice.cubic(4.0), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    p = _write(tmp_path, [("a", ok, 1.0)], cols=("material_id", "cif"))
    for errors in ("raise", "skip"):
        with pytest.raises(D.DataFileError, match="missing column.*prop"):
            D.load_dataset("mp_20", "test", path=p, properties=["prop"], errors=errors, use_cache=False,
                           progress=False)
    with pytest.raises(ValueError, match="errors must"):
        D.load_dataset("mp_20", "test", path=p, errors="ignore")


# ---------------------------------------------------------------- the real files (shared mirror)
@pytest.mark.skipif(not HAVE_MIRROR, reason="no shared data mirror")
@pytest.mark.parametrize("dataset,split,variant", [
    ("perov_5", "train", "diffcsp"), ("perov_5", "test", "diffcsp"), ("carbon_24", "val", "cdvae"),
    ("mp_20", "test", "cdvae_noindex"), ("mp_20", "val", "cdvae_noindex"), ("mpts_52", "test", "diffcsp")])
def test_mirror_files_identified(tmp_path, dataset, split, variant):
    p, f = D.fetch_entry(dataset, split, cache_dir=tmp_path, mirror=MIRROR, download=False)
    assert f.variant == variant and p.stat().st_size == f.size
    ds = D.load_dataset(dataset, split, limit=30, cache_dir=tmp_path, mirror=MIRROR, download=False,
                        progress=False, n_jobs=1)
    assert len(ds) == 30 and not ds.skipped
    assert int(ds.store["num_atoms"].max()) <= D.REGISTRY.datasets[dataset].max_atoms


@pytest.mark.skipif(not HAVE_MIRROR, reason="no shared data mirror")
def test_mirror_cdvae_variant_and_missing_train(tmp_path):
    p, f = D.fetch_entry("perov_5", "test", variant="cdvae", cache_dir=tmp_path, mirror=MIRROR, download=False)
    assert f.variant == "cdvae" and f.format == "CDVAE"
    with pytest.raises(D.MissingSplitError, match="mp_20/train"):
        D.fetch("mp_20", "train", cache_dir=tmp_path, mirror=MIRROR, download=False)


def test_read_split_load_structures_and_warm_skip_warning(tmp_path):
    raw = _toy_csv(4)
    (tmp_path / "m" / "toy").mkdir(parents=True)
    (tmp_path / "m" / "toy" / "test.csv").write_bytes(raw)
    kw = dict(cache_dir=tmp_path / "c", mirror=tmp_path / "m", registry=_registry(raw))
    df = D.read_split("toy", "test", **kw)
    assert list(df.columns) == ["material_id", "cif", "prop"] and len(df) == 4
    structs = D.load_structures("toy", "test", progress=False, **kw)
    # the CIF carries 8 decimals, so the volume is recovered to about 1e-8 relative
    assert len(structs) == 4 and all(abs(s.volume / len(s) / p - 1) < 1e-6 for s, p in zip(structs, df["prop"]))
    # a split processed with skipped rows warns again when it is read back from the processed cache
    bad = df.copy()
    bad.loc[1, "cif"] = ""
    p = tmp_path / "bad.csv"
    p.write_text(bad.to_csv())
    for _ in range(2):
        with pytest.warns(UserWarning, match="1 rows were skipped|skipped 1 of 4"):
            ds = D.load_dataset("toy", "test", path=p, errors="skip", progress=False, **kw)
        assert len(ds) == 3 and ds.skipped[0].row == 1
