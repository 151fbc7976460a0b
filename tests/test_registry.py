"""The model registry and the layering (chapter 65), outside the notebook: the lists the runs read come from the
registry, and the package's imports point down its layers."""
import pytest

from crystal_diffusion_book import registry as reg
from crystal_diffusion_book import reproduce as rp
from crystal_diffusion_book import reproduce_dng as rd


def test_runs_read_the_registry():
    assert rp.MODELS == reg.model_names("csp") and rd.DNG_MODELS == reg.model_names("dng")
    assert set(rp.TEXT_MODELS) == {n for n, e in reg.REGISTRY.items() if e.reads_text and "csp" in e.tasks}
    assert rp.TRAIN_REFERENCE == {n: reg.REGISTRY[n].train_preset for n in rp.MODELS}


def test_package_layers_hold():
    assert reg.layer_violations() == []


def test_layer_check_catches_an_upward_import():
    found = reg.layer_violations({"kinetic": "def f():\n    from crystal_diffusion_book.cli import main\n", "cli": ""})
    assert found == [("kinetic", "cli", "maths imports runs")]


def test_register_and_build_errors():
    with pytest.raises(ValueError, match="already registered"):
        reg.register(reg.ModelEntry("kldm", "kldm:KLDM"))
    with pytest.raises(ValueError, match="tasks must be among"):
        reg.register(reg.ModelEntry("x", "kldm:KLDM", ("gen",)))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['t_ff'\]"):
        reg.build("kldm", network=dict(hidden_dim=8, num_layers=1), t_ff=1.0)
    with pytest.raises(ValueError, match="train_data is needed for kldm"):
        reg.build("kldm", network=dict(hidden_dim=8, num_layers=1))
    m = reg.build("diffcsp", "dng", network=dict(hidden_dim=8, num_layers=1), dataset="carbon_24")
    assert m.config.task == "dng" and m.config.dataset in ("carbon_24", "mp_20")


def test_labels_and_class_names_come_from_the_registry():
    "Tables (run_label, variant_label) print the entry's label; --resume compares the entry's class name, unimported."
    from crystal_diffusion_book.registry import REGISTRY
    from crystal_diffusion_book.text_experiments import variant_label
    for name, e in REGISTRY.items():
        assert e.class_name == e.resolve().__name__
        assert rp.run_label({"model": name, "dataset": "perov_5"}).startswith(e.label)
        if e.reads_text:
            assert variant_label({"model": name, "dataset": "perov_5", "fields": []}).startswith(e.label + ",")
            assert rp.default_p_uncond(name) == e.resolve().config_class.__dataclass_fields__["p_uncond"].default
