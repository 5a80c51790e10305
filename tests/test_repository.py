"""Repository hygiene: CI runs the README's test command; the layout the user fixed exists."""

import re

from conftest import MYPROJECT, REPO


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^(make \w+)", quick_start, flags=re.MULTILINE)
    assert commands == ["make demo", "make test"]
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1] == "make test"


def test_fixed_layout():
    for name in [
        "Train_ResNet.py",
        "Prediction_ResNet.py",
        "Figure_merit.ipynb",
        "ClassActivationMaps.ipynb",
    ]:
        assert (MYPROJECT / name).is_file(), name
    for name in ["README.md", "requirements.txt", ".ci/run", "tests"]:
        assert (REPO / name).exists(), name


def test_requirements_are_exact_pins():
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.]*", line), line


def test_scripts_run_from_the_root_and_from_myproject():
    import subprocess
    import sys

    scripts = [
        "Train_ResNet.py",
        "Prediction_ResNet.py",
        "Make_Phantoms.py",
        "Run_Example.py",
        "Preprocess_Mammograms.py",
    ]
    for script in scripts:
        for cwd, path in ((REPO, f"myproject/{script}"), (MYPROJECT, script)):
            result = subprocess.run(
                [sys.executable, path, "--help"],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, (script, cwd, result.stderr[-500:])
            assert "usage:" in result.stdout
