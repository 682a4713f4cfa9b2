"""Repository hygiene: ruff (configured in pyproject.toml) finds nothing; CI runs what the README says."""

import importlib.metadata
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


def test_ci_runs_the_readmes_two_development_commands_in_a_fresh_venv_then_the_ui_tests_on_forges_stack():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Development\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2 and commands[1] == "python -m pytest"
    script = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    activate = steps.index("source .venv-ci/bin/activate")
    assert "rm -rf .venv-ci .venv-ci-forge-ui" in steps[:activate]
    assert "python3 -m venv .venv-ci" in steps[:activate]
    assert steps[activate + 1 : activate + 3] == commands
    # then, as the README says below the block, the UI and REST tests again on Forge's gradio 4 / pydantic 2
    forge = steps[activate + 3 :]
    assert forge[-2:] == [
        ".venv-ci-forge-ui/bin/python -m pip install -r requirements-forge-ui.txt",
        ".venv-ci-forge-ui/bin/python -m pytest tests -m ui_stack --check-pins requirements-forge-ui.txt",
    ]
    assert "python -m venv --without-pip .venv-ci-forge-ui" in forge
    assert "requirements-forge-ui.txt" in section and "pytest -m ui_stack" in section


def test_every_test_module_on_gradio_or_fastapi_runs_again_on_forges_ui_stack():
    """A new UI or REST test module is not left out of CI's gradio 4 / pydantic 2 run by mistake."""
    for path in sorted((REPO_ROOT / "tests").glob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if re.search(r"^(import|from) (gradio|fastapi)\b", text, re.MULTILINE):
            assert "\npytestmark = pytest.mark.ui_stack\n" in text, path.name


def test_forge_ui_pins_are_forges_and_leave_the_rest_to_requirements_dev():
    forge = dict(pin.split("==") for pin in requirement_lines("requirements-forge-ui.txt"))
    assert {name: forge[name] for name in ("gradio", "pydantic", "fastapi", "httpx", "httpcore")} == {
        "gradio": "4.40.0", "pydantic": "2.8.2", "fastapi": "0.104.1", "httpx": "0.24.1", "httpcore": "0.15.0"
    }  # lllyasviel/stable-diffusion-webui-forge dfdcbab6, requirements_versions.txt
    # everything else comes from requirements-dev.txt: the second environment adds the UI/API stack only
    dev = dict(pin.split("==") for pin in requirement_lines("requirements-dev.txt"))
    ui_stack = {"gradio", "gradio-client", "pydantic", "fastapi", "starlette", "httpx"}
    assert forge.keys() & dev.keys() == ui_stack


def test_check_pins_names_each_pinned_version_that_is_not_the_one_found_first(tmp_path, monkeypatch):
    from conftest import pin_mismatches

    shadowed = tmp_path / "site"
    module_file = shadowed / "magicnaming_pin_probe" / "__init__.py"
    module_file.parent.mkdir(parents=True)
    module_file.write_text('__version__ = "2.0"\n')
    (shadowed / "magicnaming_pin_probe-1.0.dist-info").mkdir()
    (shadowed / "magicnaming_pin_probe-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: magicnaming-pin-probe\nVersion: 1.0\n"
    )
    monkeypatch.syspath_prepend(str(shadowed))
    pins = tmp_path / "pins.txt"
    pins.write_text(
        f"# a comment\npytest=={pytest.__version__}  # as installed\nruff==0.0.1\nno-such-package==1.0\n"
        "magicnaming-pin-probe==1.0\n"
    )
    try:
        problems = pin_mismatches(pins)
    finally:
        sys.modules.pop("magicnaming_pin_probe", None)  # the check imported it
    assert problems == [
        f"ruff==0.0.1: {importlib.metadata.version('ruff')} is installed",
        "no-such-package==1.0: not installed",
        f"magicnaming-pin-probe==1.0: 2.0 is imported (from {module_file})",
    ]


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
