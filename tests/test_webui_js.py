"""javascript/magicnaming.js: syntax (node --check) and its node tests (pure functions + a DOM stub)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


@needs_node
def test_javascript_parses():
    for script in sorted((ROOT / "javascript").glob("*.js")):
        result = subprocess.run([NODE, "--check", str(script)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


@needs_node
def test_javascript_behaviour():
    result = subprocess.run(
        [NODE, str(ROOT / "tests" / "js" / "magicnaming.test.js")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not ok" not in result.stdout
    assert "7/7 passed" in result.stdout
