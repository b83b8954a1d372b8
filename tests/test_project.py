"""Project files agree with each other, and the packages keep to their boundaries."""

import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.conftest import REPO


def test_environment_yml_asks_for_exactly_what_pyproject_asks_for():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {req for req in pip_section if not req.startswith("-e")}
    assert listed == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.split("=")[1] >= project["requires-python"].lstrip(">=")


def test_trainer_does_not_import_ray():
    code = ("import sys, trainer.train, trainer.cli, trainer.surgery; "
            "assert 'ray' not in sys.modules, 'trainer imported ray'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_ci_runs_the_readme_setup_and_test_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    for command in ("pip install -e '.[dev]'", "python -m pytest -q"):
        assert command in readme, f"README lost {command!r}"
    assert "pip install" in ci and "-e '.[dev]'" in ci and "python -m pytest -q" in ci


@pytest.mark.parametrize("argv", [["overhead", "--reps", "0"], ["shrink", "--steps", "-1"],
                                  ["shrink", "--model", "nowhere/model.pt"],
                                  ["shrink", "--model", "pyproject.toml"],
                                  ["inference", "--batches", "many", "tests"],
                                  ["inference", "nowhere"], ["inference", "tests"],
                                  ["floor", "--data-dir", "tests"],
                                  ["sweep_overhead", "--trials", "0"],
                                  ["roofline", "--matmul", "0"],
                                  ["gpu_check", "--kind", "nope", "--data-dir", "data"],
                                  ["gpu_check", "--width", "-1", "--kind", "narrow-float",
                                   "--data-dir", "data"],
                                  ["launches", "--preset", "huge"],
                                  ["launches", "--cut", "nowhere/model.pt"],
                                  ["launches", "--cut", "pyproject.toml"],
                                  ["align", "--reps", "0"], ["host", "--steps", "0"],
                                  ["tta", "nowhere/model.pt", "--data-dir", "data"],
                                  ["tta", "pyproject.toml", "--data-dir", "data"]])
def test_benchmarks_reject_bad_input_on_one_line(argv):
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{argv[0]}", *argv[1:]], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"benchmarks.{argv[0]}: error: "), done.stderr
    assert argv[1] in lines[0]


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_front.sh"])
def test_the_gpu_scripts_parse(script):
    # They run only on a lent GPU machine; here at least bash must accept them.
    done = subprocess.run(["bash", "-n", f"benchmarks/{script}"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
