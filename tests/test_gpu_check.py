"""tools/gpu_check.py on a CPU machine: no CUDA means a message and exit 0; the record writer; the --device cpu dry run."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--out", str(tmp_path / "r.json")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no CUDA device" in r.stdout and not (tmp_path / "r.json").exists()


def test_record_writer_is_atomic_json(tmp_path):
    p = gpu_check.write_record({"ok": True, "checks": {"a": {"seconds": 1.5}}, "path": tmp_path}, tmp_path / "sub" / "r.json")
    assert json.loads(p.read_text())["checks"]["a"]["seconds"] == 1.5
    assert [q.name for q in p.parent.iterdir()] == ["r.json"]          # no temporary file left behind


def test_bad_device_is_a_usage_error(capsys):
    assert gpu_check.main(["--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_cpu_dry_run_exercises_every_check(tmp_path, one_thread):
    assert gpu_check.main(["--device", "cpu", "--tiny", "--steps", "2", "--batch", "8", "--sample-n", "4",
                           "--sample-steps", "2", "--out", str(tmp_path / "r.json")]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    names = {f"{m}_{c}" for m in ("diffcsp", "kldm") for c in ("train_bf16", "sample_device_generator", "checkpoint_resume")}
    assert set(rec["checks"]) == names | {"ddp_one_process"} and rec["ok"]
    assert rec["checks"]["ddp_one_process"]["backend"] == "gloo"
    assert rec["checks"]["diffcsp_checkpoint_resume"]["resumed_to_step"] == 4
