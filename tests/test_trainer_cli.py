"""The trainer's command line: bad input is one line and exit 2; a good run writes Parquet."""

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.train", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, says", [
    (["--gamma", "-1"], "--gamma must be"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--data-dir", "/nonexistent/cifar"], "does not hold CIFAR-10"),
    (["--gamma", "abc"], "invalid float value"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--min-bits", "-1"], "--min-bits must be in [0, 16]"),
    (["--cut-align", "0"], "--cut-align must be at least 1"),
    (["--init-bits", "2"], "--init-bits 2 is not above --min-bits 3"),
    (["--fade", "--min-bits", "0"], "--fade needs a floor of at least 2 bits"),
    (["--ration", "0"], "--ration must be in (0, 1], got 0.0"),
    (["--ration", "0.5", "--fade"], "--ration 0.5 and --fade are two ways"),
    (["--gamma", "nan"], "--gamma must be a number >= 0, got nan"),
    (["--width", "inf"], "--width must be > 0, got inf"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--precision", "fp16"], "unknown --precision 'fp16': choose auto"),
])
def test_bad_input_exits_2_with_one_line(args, says, tmp_path, capsys):
    """In-process: the parser and the checks are what a subprocess would run."""
    from trainer.cli import run

    with pytest.raises(SystemExit) as stop:
        run([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert says in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("make, says", [
    (lambda t: (t / "file").write_text("x") and t / "file" / "out", "is a file, not a folder"),
    (lambda t: (t / "file").write_text("x") and t / "file", "is a file: give a folder"),
])
def test_an_out_that_cannot_be_written_is_refused_before_training(tmp_path, capsys, make,
                                                                  says):
    from trainer.cli import run

    out = make(tmp_path)
    with pytest.raises(SystemExit) as stop:
        run(["--preset", "smoke", "--dataset", "synthetic", "--out", str(out)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and says in err and err.count("\n") == 1
    assert "epoch" not in capsys.readouterr().out  # no training started


def test_a_network_whose_out_fails_at_the_end_is_saved_beside(tmp_path, capsys, monkeypatch):
    """The folder vanishes (or fills up) while it trains: the network is not lost."""
    import trainer.cli as cli

    monkeypatch.chdir(tmp_path)
    real = cli.write_outputs
    calls = []

    def flaky(out, *rest):
        calls.append(out)
        if len(calls) == 1:
            raise PermissionError(13, "Permission denied")
        real(out, *rest)

    monkeypatch.setattr(cli, "write_outputs", flaky)
    with pytest.raises(SystemExit) as stop:
        cli.run(["--preset", "smoke", "--dataset", "synthetic", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "gone")])
    err = capsys.readouterr().err
    assert stop.value.code == 1
    assert f"cannot write to {tmp_path / 'gone'} (Permission denied)" in err
    rescued = calls[1]
    assert rescued.parent == tmp_path and str(rescued) in err
    assert (rescued / "model.pt").is_file() and (rescued / "trials.parquet").is_file()


def test_a_data_dir_without_cifar10_is_rejected_even_when_it_exists(tmp_path, capsys):
    from trainer.cli import run

    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(SystemExit) as stop:
        run(["--data-dir", str(tmp_path)])
    assert stop.value.code == 2 and "does not hold CIFAR-10" in capsys.readouterr().err


def test_help_explains_the_method_and_the_presets(capsys):
    from trainer.cli import run

    with pytest.raises(SystemExit) as stop:
        run(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    for needle in ("gamma", "--preset", "smoke", "demo", "--data-dir", "--float-baseline",
                   "examples"):
        assert needle in out


def test_a_smoke_run_writes_the_three_parquet_files_and_a_model(tmp_path):
    """A subprocess: ``python -m trainer.train`` as a user types it."""
    out = run_cli("--preset", "smoke", "--dataset", "synthetic", "--epochs", "2",
                  "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout and "epoch" in out.stdout
    trials = pq.read_table(tmp_path / "trials.parquet").to_pylist()
    epochs = pq.read_table(tmp_path / "epochs.parquet").to_pylist()
    layers = pq.read_table(tmp_path / "layers.parquet").to_pylist()
    assert len(trials) == 1 and trials[0]["status"] == "TERMINATED"
    assert trials[0]["preset"] == "smoke" and trials[0]["kind"] == "compress"
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["trial_id"] == trials[0]["trial_id"] for e in epochs + layers)
    assert {row["layer"] for row in layers} >= {"prep", "layer1", "res1.conv1", "head"}
    assert 0 < trials[0]["bits_fraction"] <= 1
    assert (tmp_path / "model.pt").stat().st_size > 1000
