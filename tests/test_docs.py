"""Every command README.md and docs/sweep.md show, run as written (issue 37).

The commands are read from the documents' code blocks, so a command that changes there is
checked as it now reads, in the order shown. They run in a folder laid out as the
documents assume: ``space.yaml`` as the document shows it, CIFAR-10 (tiny fake batches)
both in ``../shared/data`` and where a download would have put it, and what each step
leaves for the next (a sweep folder: a real smoke sweep's; a trainer run). What takes
seconds runs whole (``analysis.plots``, ``trainer.export``); a sweep or a training run is
taken through everything its program checks before work begins (``sweep.config.prepare``,
``trainer.cli.check``): the code that refused a documented ``--resume`` before.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from sweep import config as sweep_config
from sweep.cli import parse as parse_sweep
from tests.conftest import REPO
from tests.test_start import float_file
from tests.test_sweep import fake_cifar10
from trainer import cli as train_cli
from trainer.config import TrainConfig

DOCUMENTS = ("README.md", "docs/sweep.md")
# Shown but not run here, each with why; the test fails when one is no longer shown.
NOT_RUN = {
    "python -m pytest -q": "the suite itself",
    "python -m sweep.run --address <head-ip>:6379 --results-dir /shared/results "
    "--data-dir /shared/cifar": "a cluster of several machines (test_sweep attaches to one)",
    "python -m sweep.run --mlflow http://mlflow.example:5000 ...": "a tracking server",
}


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def documented(path: Path) -> tuple[list[str], str | None]:
    """The ``python -m`` commands of ``path``'s code blocks (continuation lines joined,
    comments dropped) and its YAML block that defines ``parameters:``, if any."""
    commands, space = [], None
    for block in code_blocks(path.read_text()):
        if block.startswith("parameters:"):
            space = block
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("python -m "):
                commands.append(" ".join(line.split()))
    return commands, space


class Reader:
    """A reader working through a document in ``work``: each step checked leaves what it
    would have written for the steps after it (a sweep: a copy of a real smoke sweep; a
    training run: a real one-epoch run, or a float network of the default preset)."""

    def __init__(self, work: Path, space: str | None, smoke_folder: Path):
        self.work, self.smoke_folder = work, smoke_folder
        (work / "results").mkdir(parents=True)
        if space is not None:
            (work / "space.yaml").write_text(space)
        shutil.copytree(smoke_folder, work / "results" / "NAME")  # docs/sweep.md's name

    def train(self, argv: list[str]) -> None:
        args = train_cli.parser().parse_args(argv)
        asked, config = train_cli.check(args)
        assert isinstance(asked, TrainConfig) and config.epochs >= 0
        if args.out is None or Path(args.out).exists():
            return
        if config.kind == "float-baseline":
            Path(args.out).mkdir(parents=True)
            float_file(Path(args.out) / "model.pt", TrainConfig(preset=config.preset))
        else:
            train_cli.run(["--preset", "smoke", "--dataset", "synthetic", "--epochs", "1",
                           "--quiet", "--out", str(args.out)])

    def sweep(self, argv: list[str]) -> None:
        c = sweep_config.prepare(*parse_sweep(argv))
        assert not (c.folder / sweep_config.SWEEP_FILE).exists()
        shutil.copytree(self.smoke_folder, c.folder)


def run_main(module: str, argv: list[str]) -> None:
    if module == "analysis.plots":
        from analysis.plots import main
    else:
        from trainer.export.cli import main
    try:
        main(argv)
    except SystemExit as stop:
        assert stop.code in (0, None), f"python -m {module} {shlex.join(argv)}: exit {stop.code}"


@pytest.mark.ray
@pytest.mark.xdist_group("smoke-sweep")  # the smoke sweep's process builds its fixture
@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_documented_command_runs_as_written(document, smoke, tmp_path, monkeypatch,
                                                  capsys):
    commands, space = documented(REPO / document)
    assert len(commands) >= 8, commands  # the reader still finds them
    fake_cifar10(tmp_path / "shared" / "data")  # ../shared/data, as the documents give it
    reader = Reader(tmp_path / "work", space, smoke[0])
    monkeypatch.chdir(reader.work)
    monkeypatch.setenv("SCNN_DATA_CACHE", str(fake_cifar10(tmp_path / "cache")))
    ran = []
    for command in commands:
        if command in NOT_RUN:
            continue
        module, *argv = shlex.split(command)[2:]
        check = {"trainer.train": reader.train, "sweep.run": reader.sweep,
                 "analysis.plots": lambda a: run_main("analysis.plots", a),
                 "trainer.export": lambda a: run_main("trainer.export", a)}.get(module)
        assert check is not None, f"{command}: no check for python -m {module}: add one"
        try:
            check(argv)
        except SystemExit as stop:  # argparse's own refusal
            raise AssertionError(f"{command}: exit {stop.code}: {capsys.readouterr().err}") \
                from None
        except Exception as err:
            raise AssertionError(f"{command}: {type(err).__name__}: {err}") from None
        ran.append(command)
    assert ran


def test_the_commands_not_run_are_still_shown():
    shown = {c for doc in DOCUMENTS for c in documented(REPO / doc)[0]}
    assert set(NOT_RUN) <= shown, set(NOT_RUN) - shown


def test_a_command_the_program_refuses_fails_the_check(tmp_path, monkeypatch):
    """The check can fail: a documented sweep with a flag its program refuses, or a
    training run whose start cannot be loaded."""
    monkeypatch.chdir(tmp_path)
    reader = Reader(tmp_path / "work", None, fake_cifar10(tmp_path / "smoke"))
    with pytest.raises(Exception, match="--gamma-min"):
        reader.sweep(["--gamma-min", "1", "--gamma-max", "0.1", "--dataset", "synthetic"])
    with pytest.raises(Exception, match="no such file"):
        reader.train(["--init-from", "missing/model.pt", "--dataset", "synthetic"])
    with pytest.raises(SystemExit):
        train_cli.parser().parse_args(["--no-such-flag"])
