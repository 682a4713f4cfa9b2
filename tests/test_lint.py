"""The repository is lint clean: ruff, configured in pyproject.toml, finds nothing."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


RUFF_MISSING = importlib.util.find_spec("ruff") is None


@pytest.mark.skipif(RUFF_MISSING, reason="ruff is not installed (it is in requirements-dev.txt)")
def test_ruff_check_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"ruff found problems:\n{result.stdout}\n{result.stderr}"
