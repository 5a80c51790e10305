"""The README's tutorial on a CPU, run as written: its commands chain, in order, at a tiny size."""

import re
import shlex
import subprocess
import sys

import pytest
from conftest import MYPROJECT, REPO

# What makes the README's run tiny: the same commands with fewer subjects and one epoch.
TINY = {"--subjects 200 40 20": "--subjects 8 4 4", "--epochs 15": "--epochs 1"}


def cpu_run_commands() -> list[str]:
    """The commands of the README block marked ``<!-- cpu-run``, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- cpu-run.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md: the CPU run's code block is marked with <!-- cpu-run ... -->"
    return [line for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def test_the_cpu_run_chains_under_runs():
    commands = cpu_run_commands()
    assert commands[0] == "cd myproject"
    written = set()
    for command in commands[1:]:
        words = shlex.split(command)
        paths = [w for w in words if w.startswith("../runs/cpu")]
        assert paths, f"{command}: writes or reads under ../runs/cpu/"
        for flag, value in zip(words, words[1:], strict=False):
            # a folder read must be one an earlier command wrote
            if flag in ("--data-root", "--models-root", "--test-root", "predictions_dir"):
                if "Train_ResNet" in command and flag == "--models-root":
                    continue
                assert any(value.startswith(w) for w in written), (command, value)
        written |= {p for p in paths if p.count("/") >= 3}


@pytest.mark.slow
def test_the_cpu_run_runs_as_written_at_a_tiny_size(tmp_path):
    runs = tmp_path / "runs" / "cpu"
    for command in cpu_run_commands()[1:]:
        for large, small in TINY.items():
            command = command.replace(large, small)
        command = command.replace("../runs/cpu", str(runs))
        command = re.sub(r"^python ", shlex.quote(sys.executable) + " ", command)
        result = subprocess.run(
            command, shell=True, cwd=MYPROJECT, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, (command, result.stderr[-3000:])
    assert len(list((runs / "models").glob("*_model/final_weights.keras"))) == 4
    assert (runs / "Prediction" / "metrics.csv").is_file()
    assert list((runs / "MAPS" / "CC_R").rglob("*_overlay.png"))
