"""docs/ablation-precision/parts.py: a part held in bf16 is bf16 after training, the other
parts are not, and its table compares each part with the float32 run of the same seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.network import load_model

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / "docs" / "ablation-precision" / "parts.py"
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
