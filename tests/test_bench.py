"""Smoke test of the bench suite (tiny sizes, no torch.compile): it runs and writes its JSON.
Speed itself is measured by `make bench`, never asserted here."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_suite_quick_runs_and_writes_json():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"], capture_output=True,
                         text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| op" in out.stdout and "summary" in out.stdout
    data = json.loads((ROOT / "bench" / "results" / "reparameterize.quick.json").read_text())
    providers = {r["provider"] for r in data["rows"]}
    assert "eager reference" in providers and all(r["ms"] > 0 for r in data["rows"] if r["ms"])


def test_bench_suite_rejects_unknown_name():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "nope"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "unknown benchmark" in out.stderr
