"""Project files agree with each other, and the packages keep to their boundaries."""

import importlib
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator

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


def test_a_sweeps_driver_does_not_import_torch():
    """A sweep's driver needs no torch (about 2.5 CPU-seconds to import, at every start and
    resume) but to export its front: its checks, one-line errors, Tune loop and loggers run
    without it. Its trials import it in their own processes."""
    code = ("import sys, sweep.run, sweep.trainable, sweep.study, sweep.store, sweep.loggers, "
            "sweep.checkpoints, analysis.pareto, analysis.quality; "
            "assert 'torch' not in sys.modules, 'the sweep driver imported torch'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_ci_runs_the_readme_setup_and_test_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    for command in ("python3 -m venv .venv", "source .venv/bin/activate",
                    "pip install -e '.[dev]'", "python -m pytest -q"):
        assert command in readme, f"README lost {command!r}"
    # a fresh virtual environment, as a newcomer makes, not the interpreter CI starts with
    assert "python3 -m venv .venv" in ci and "source .venv/bin/activate" in ci
    assert "pip install" in ci and "-e '.[dev]'" in ci and "python -m pytest -q" in ci


@pytest.mark.parametrize("argv", [["overhead", "--reps", "0"], ["shrink", "--steps", "-1"],
                                  ["shrink", "--model", "nowhere/model.pt"],
                                  ["shrink", "--model", "pyproject.toml"],
                                  ["profile_step", "--model", "nowhere/model.pt"],
                                  ["inference", "--batches", "many", "tests"],
                                  ["inference", "nowhere"], ["inference", "tests"],
                                  ["profile_onnx", "nowhere"],
                                  ["profile_onnx", "--batches", "0", "tests"],
                                  ["sweep_overhead", "--trials", "0"],
                                  ["roofline", "--matmul", "0"],
                                  ["gpu_check", "--kind", "nope", "--data-dir", "data"],
                                  ["gpu_check", "--width", "-1", "--kind", "narrow-float",
                                   "--data-dir", "data"],
                                  ["align", "--reps", "0"], ["host", "--steps", "0"],
                                  ["elementwise", "--reps", "0"],
                                  ["elementwise", "--compile", "max"],
                                  ["elementwise", "--model", "nowhere/model.pt"],
                                  ["shrink", "--align", "0"],
                                  ["tta", "nowhere/model.pt", "--data-dir", "data"],
                                  ["tta", "pyproject.toml", "--data-dir", "data"]])
def test_benchmarks_reject_bad_input_on_one_line(argv, monkeypatch, capsys):
    """In-process: ``python -m benchmarks.NAME`` runs exactly ``main()`` with this argv."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{argv[0]}.py", *argv[1:]])
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"benchmarks.{argv[0]}").main()
    out, err = capsys.readouterr()
    assert stop.value.code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"benchmarks.{argv[0]}: error: "), err
    assert argv[1] in lines[0]


def test_shrink_times_a_trained_network_in_both_precisions(tmp_path, monkeypatch, capsys):
    """A tiny run, for what it prints, not its speed: a trained network, its uncut start and
    its twin, each in fp32 and bf16 (trainer.precision.autocast_for, as the trainer)."""
    from trainer.cli import run

    run(["--preset", "smoke", "--dataset", "synthetic", "--epochs", "1", "--quiet",
         "--out", str(tmp_path)])
    capsys.readouterr()
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["benchmarks/shrink.py", "--model", str(tmp_path / "model.pt"),
                                      "--reps", "1", "--steps", "1", "--batch", "4"])
    importlib.import_module("benchmarks.shrink").main()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"fp32", "bf16", "bf16_over_fp32"} <= set(printed)
    assert all(printed[q]["after_epoch_s"] > 0 for q in ("fp32", "bf16"))


def test_elementwise_times_the_blocks_and_the_step_and_finds_the_orders_equal(
        tmp_path, monkeypatch, capsys):
    """A tiny run, for what it prints: every block of the uncut and the trained network, the
    trainer's order against the old one, bit for bit equal; the step both ways; shrink's
    aligned twin keeps multiples of 8."""
    from trainer.cli import run

    run(["--preset", "smoke", "--dataset", "synthetic", "--epochs", "1", "--quiet",
         "--out", str(tmp_path)])
    capsys.readouterr()
    monkeypatch.chdir(REPO)
    model = str(tmp_path / "model.pt")
    monkeypatch.setattr(sys, "argv", ["benchmarks/elementwise.py", "--model", model,
                                      "--reps", "1", "--batch", "4"])
    importlib.import_module("benchmarks.elementwise").main()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [b["block"] for b in printed["blocks"]["uncut"]][:2] == ["prep", "layer1"]
    assert all(b["exact"] and b["now_ms"] > 0 for rows in printed["blocks"].values()
               for b in rows)
    assert printed["step"]["cut"]["now_s"] > 0 and printed["ratio"] > 0
    monkeypatch.setattr(sys, "argv", ["benchmarks/shrink.py", "--model", model, "--reps", "1",
                                      "--steps", "1", "--batch", "4", "--align", "8",
                                      "--precision", "fp32"])
    importlib.import_module("benchmarks.shrink").main()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["fp32"]["aligned_ratio"] > 0
    assert all(n % 8 == 0 or n == printed["widths"][name]
               for name, n in printed["aligned_widths"].items() if name != "head")


def test_tests_of_one_xdist_group_run_in_one_process(tmp_path):
    """The suite's shared fixtures (the smoke sweep, the strong run, the export run) are
    built once because their tests share an xdist_group; pytest 9.2 silently broke that
    (pyproject.toml's pin)."""
    (tmp_path / "test_groups.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.xdist_group('g')\n"
        "@pytest.mark.parametrize('i', range(4))\n"
        "def test_grouped(i):\n"
        "    print('worker', os.environ['PYTEST_XDIST_WORKER'])\n"
        "def test_a(): pass\n"
        "def test_b(): pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup",
                           "-v", "-p", "no:cacheprovider", "test_groups.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    workers = set(re.findall(r"\[(gw\d)\] .*PASSED test_groups.py::test_grouped", done.stdout))
    assert len(workers) == 1, done.stdout


@pytest.mark.parametrize("script", ["gpu_check.sh"])
def test_the_gpu_scripts_parse(script):
    # They run only on a lent GPU machine; here at least bash must accept them.
    done = subprocess.run(["bash", "-n", f"benchmarks/{script}"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def markdown_text(path) -> str:
    """A markdown file without its fenced code blocks (whose lines are neither links nor
    headings)."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)


def anchors(path) -> Iterator[str]:
    """The heading anchors GitHub gives a markdown file (lower case, punctuation dropped,
    spaces to hyphens, repeats numbered)."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+\s+(.*?)\s*$", markdown_text(path), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        yield slug if n == 0 else f"{slug}-{n}"


DOCS = ["README.md", "benchmarks/README.md", *sorted(str(p.relative_to(REPO))
                                                     for p in (REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_in_the_docs_resolves_inside_the_repository(doc):
    path = REPO / doc
    for target in re.findall(r"\]\(([^)\s]+)\)", markdown_text(path)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.is_relative_to(REPO), f"{doc}: {target} leaves the repository"
        assert resolved.exists(), f"{doc}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in set(anchors(resolved)), f"{doc}: no heading #{anchor} in {file}"
