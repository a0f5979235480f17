"""`ruff check` (pyflakes, import order, bugbear; settings in pyproject.toml) passes on the whole tree,
so `pytest` alone, as well as `make test`, catches an unused import or a closure over a loop variable."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
