"""docs/ablation-precision/: parts.py (a part held in bf16 is bf16 after training, float32 is
not, and its table compares each part with the float32 run of the same seed) and table.py
(bf16 against fp32 pairs from trainer.train folders and sweep folders alike)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainer.network import load_model

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / "docs" / "ablation-precision" / "parts.py"
TABLE = ROOT / "docs" / "ablation-precision" / "table.py"
SMOKE = ["--preset", "smoke", "--dataset", "synthetic", "--epochs", "1", "--threads", "1",
         "--quiet"]


def parts(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PARTS), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parts")
    for part in ("none", "bn_stats"):
        done = parts("run", part, *SMOKE, "--out", str(out / f"{part}-s0"))
        assert done.returncode == 0, done.stderr
    return out


def running_vars(folder: Path) -> torch.Tensor:
    """model.pt's BatchNorm running variances (its weights are quantized, so bf16-exact, and
    its running means hold the integer exponents' fractions: neither can tell)."""
    model = load_model(folder / "model.pt")
    return torch.cat([block.bn.running_var for _, block in model.blocks()])


def test_the_held_part_is_bf16_and_float32_is_not(runs):
    def share_in_bf16(t: torch.Tensor) -> float:
        return (t == t.to(torch.bfloat16).float()).float().mean().item()

    assert share_in_bf16(running_vars(runs / "bn_stats-s0")) == 1.0
    assert share_in_bf16(running_vars(runs / "none-s0")) < 0.1


def test_each_run_counts_the_updates_bf16_would_round_away(runs):
    for part in ("none", "bn_stats"):
        lost = json.loads((runs / f"{part}-s0" / "parts.json").read_text())["lost"]
        assert set(lost) == {"weights", "bn", "quant", "bn_stats", "optimizer"}
        for counts in lost.values():
            assert 0 <= counts["lost"] <= counts["changed"]
        assert lost["weights"]["changed"] > 0 and lost["bn_stats"]["changed"] > 0
        assert 0 < lost["weights"]["lost_share"] < 1


def test_the_table_compares_each_part_with_float32_of_its_seed(runs):
    done = parts("table", str(runs))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| none")
            or line.startswith("| bn_stats")]
    assert len(rows) == 2
    none, held = (row.split("|") for row in sorted(rows, key=lambda r: "| none" not in r))
    assert none[6].strip() == "+0.00"  # float32 against itself
    assert "quant" in none[8] and "bn_stats" in none[8]  # what bf16 would lose, every part
    assert "bn_stats" in held[8] and "quant" not in held[8]  # its own part only


@pytest.mark.parametrize("args, says", [
    (["run", "halves", "--out", "x"], "unknown part 'halves'"),
    (["run", "quant", "--preset", "smoke"], "give trainer.train's --out"),
    (["table", "/nowhere"], "/nowhere is not a folder"),
    (["fit"], "usage"),
])
def test_bad_input_is_one_line_and_exit_2(args, says):
    done = parts(*args)
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1


def trial_row(precision: str, gamma: float, seed: int, accuracy: float, bits: float,
              status: str = "TERMINATED") -> dict:
    return {"kind": "compress", "status": status, "precision": precision, "gamma": gamma,
            "seed": seed, "test_accuracy": accuracy, "bits_fraction": bits,
            "weights_kept_fraction": 0.05, "train_time_s": 100.0, "code_version": "abc1234",
            "cpu_model": "a CPU"}


def write(folder: Path, *rows: dict) -> None:
    folder.mkdir(parents=True)
    pd.DataFrame(list(rows)).to_parquet(folder / "trials.parquet")


def table(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TABLE), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_the_parity_table_pairs_runs_from_train_folders_and_sweeps(tmp_path):
    write(tmp_path / "fp32-g0.1-s0", trial_row("fp32", 0.1, 0, 0.72, 0.0070))
    write(tmp_path / "fp32-g0.1-s1", trial_row("fp32", 0.1, 1, 0.71, 0.0071))
    write(tmp_path / "bf16-g0.1-s0", trial_row("bf16", 0.1, 0, 0.715, 0.0077))
    write(tmp_path / "bf16-g0.1", trial_row("bf16", 0.1, 1, 0.70, 0.0071),  # a sweep
          trial_row("bf16", 0.1, 2, 0.69, 0.007, status="RUNNING"))
    done = table(str(tmp_path), "--plot", str(tmp_path / "parity.png"))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 0.1")]
    assert [r.split("|")[2].strip() for r in rows] == ["0", "1"]
    assert [r.split("|")[5].strip() for r in rows] == ["-0.50", "-1.00"]
    assert [r.split("|")[6].strip() for r in rows] == ["1.100", "1.000"]
    assert "| all | 2 pairs |" in done.stdout and "mean -0.75" in done.stdout
    assert (tmp_path / "parity.png").stat().st_size > 0


def test_a_run_trained_twice_or_named_wrong_is_refused_on_one_line(tmp_path):
    write(tmp_path / "bf16-g0.1-s0", trial_row("bf16", 0.1, 0, 0.715, 0.0077))
    write(tmp_path / "bf16-g0.1", trial_row("bf16", 0.1, 0, 0.70, 0.0071))
    done = table(str(tmp_path))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "trained twice (bf16-g0.1, bf16-g0.1-s0)" in done.stderr
    wrong = tmp_path / "other"
    write(wrong / "fp32-g0.1-s0", trial_row("bf16", 0.1, 0, 0.715, 0.0077))
    done = table(str(wrong))
    assert done.returncode == 2 and "its name says fp32" in done.stderr
