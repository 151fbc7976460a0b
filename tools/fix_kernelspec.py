"""Give every chapter notebook the python3 kernelspec papermill needs (jupytext and some editors leave it out)."""
import json
from pathlib import Path

KS = {"display_name": "python3", "language": "python", "name": "python3"}
for p in sorted((Path(__file__).resolve().parents[1] / "nbs").glob("*.ipynb")):
    nb = json.loads(p.read_text())
    if nb.get("metadata", {}).get("kernelspec") != KS:
        nb.setdefault("metadata", {})["kernelspec"] = KS
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"kernelspec set: {p.name}")
