"""Repository hygiene: ruff (configured in pyproject.toml) finds nothing; CI runs what the README says."""

import importlib.util
import re
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


def test_ci_runs_exactly_the_readmes_two_development_commands_in_a_fresh_venv():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Development\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2 and commands[1] == "python -m pytest"
    script = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    activate = steps.index("source .venv-ci/bin/activate")
    assert "python3 -m venv .venv-ci" in steps[:activate] and "rm -rf .venv-ci" in steps[:activate]
    assert steps[activate + 1 :] == commands


def requirement_lines(name: str) -> list[str]:
    text = (REPO_ROOT / name).read_text(encoding="utf-8")
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def test_requirements_txt_lists_what_install_py_installs_with_the_same_pins():
    spec = importlib.util.spec_from_file_location("magicnaming_install_for_lint", REPO_ROOT / "install.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    runtime = requirement_lines("requirements.txt")
    assert set(install.PINS.values()) <= set(runtime)
    dev = requirement_lines("requirements-dev.txt")
    for pin in runtime:
        if "==" in pin:  # an exact runtime pin is what the tests run against
            assert pin in dev
    # the insightface detector is optional: install.py installs it only on request, so none of it is a
    # run-time need, but all of it is in the test environment, where insightface's real loader is tested
    optional = {requirement_name(install.INSIGHTFACE_PIN), *install.RUNTIMES, "onnx", "scikit-image"}
    assert optional.isdisjoint({requirement_name(pin) for pin in runtime})
    assert set(install.INSIGHTFACE_DEPENDENCIES) >= {"onnx", "scikit-image"}
    assert optional - {"onnxruntime-gpu"} <= {requirement_name(pin) for pin in dev}
