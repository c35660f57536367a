"""The README's measured tables are what bench/results/*.json say (bench/readme_tables.py)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_tables_match_bench_results():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "readme_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_readme_has_the_generated_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    for name in ("reproduce", "models", "ops", "sampling", "quality"):
        assert f"<!-- generated:{name} -->" in text and f"<!-- /generated:{name} -->" in text
