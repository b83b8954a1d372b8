"""docs/ablation-precision/: parts.py (a part held in bf16 is bf16 after training, float32 is
not, and its table compares each part with the float32 run of the same seed), emulate.py
(bf16 as float32 sums rounded once, every op autocast lowers taken) and table.py (bf16 and
emulated bf16 against fp32, from trainer.train folders and sweep folders alike)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.config import TrainConfig, resolve
from trainer.network import load_model, model_for

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / "docs" / "ablation-precision" / "parts.py"
TABLE = ROOT / "docs" / "ablation-precision" / "table.py"
EMULATE = ROOT / "docs" / "ablation-precision" / "emulate.py"
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


def emulate_module():
    spec = importlib.util.spec_from_file_location("emulate", EMULATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_emulated_bf16_rounds_each_sum_once_forward_and_backward():
    emulate = emulate_module()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, 16, 3, 3, generator=g)
    dy = torch.randn(32, 24, 8, 8, generator=g).bfloat16()
    x.requires_grad_(), w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16), emulate.EmulatedBF16() as mode:
        y = F.conv2d(x, w, None, 1, 1)
    y.backward(dy)
    xd, wd = (t.detach().bfloat16().double().requires_grad_() for t in (x, w))
    exact = F.conv2d(xd, wd, None, 1, 1)
    exact.backward(dy.double())
    assert mode.calls == 1 and y.dtype == torch.bfloat16 and x.grad.dtype == torch.float32
    for got, sums in ((y, exact), (x.grad, xd.grad), (w.grad, wd.grad)):
        # float32 sums differ from exact ones only where the exact sum lies at a rounding tie
        assert (got == sums.bfloat16()).float().mean().item() > 0.999


class BF16Inputs(TorchDispatchMode):
    """The aten ops that receive a bf16 tensor."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16
               for a in torch.utils._pytree.tree_leaves((args, kwargs or {}))):
            self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_emulation_takes_every_product_autocast_lowers_in_the_network():
    emulate = emulate_module()
    products = {"convolution", "convolution_backward", "mm", "addmm", "bmm"}
    seen = {}
    for emulated in (False, True):
        torch.manual_seed(0)
        model = model_for(resolve(TrainConfig(preset="smoke", dataset="synthetic"),
                                  has_gpu=False))
        x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with BF16Inputs() as ops:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if emulated:
                    with emulate.EmulatedBF16():
                        logits = model(x)
                else:
                    logits = model(x)
            logits.float().sum().backward()
        seen[emulated] = ops.ops & products
    assert {"convolution", "convolution_backward"} <= seen[False]  # autocast lowers these
    assert seen[True] == set()  # and the emulation takes every one of them


def emulate_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EMULATE), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_an_emulated_run_trains_in_bf16_and_says_it_was_emulated(tmp_path):
    done = emulate_run(*SMOKE, "--out", str(tmp_path / "emu-g0.01-s0"))
    assert done.returncode == 0, done.stderr
    assert "rounded once" in done.stdout
    marker = json.loads((tmp_path / "emu-g0.01-s0" / "emulated.json").read_text())
    assert marker["calls"] > 0 and marker["ops"] == ["conv2d", "linear"]
    assert pd.read_parquet(tmp_path / "emu-g0.01-s0" / "trials.parquet")["precision"][0] == "bf16"


@pytest.mark.parametrize("args, says", [
    (["--precision", "fp32", "--out", "x"], "emulate.py trains in bf16"),
    (["--precision=fp32", "--out", "x"], "emulate.py trains in bf16"),
    (["--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["--device", "cuda", "--out", "x"], "give --device cpu"),
    (["--preset", "smoke"], "give trainer.train's --out"),
])
def test_emulate_refuses_what_it_cannot_run_on_one_line(args, says):
    done = emulate_run(*args)
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_table_pairs_emulated_runs_with_fp32_and_compares_fronts(tmp_path):
    for g, acc, bits in ((0.001, 0.80, 0.10), (0.01, 0.78, 0.03), (0.1, 0.72, 0.007)):
        write(tmp_path / f"fp32-g{g}-s0", trial_row("fp32", g, 0, acc, bits))
        write(tmp_path / f"emu-g{g}-s0", trial_row("bf16", g, 0, acc - 0.002, bits))
        (tmp_path / f"emu-g{g}-s0" / "emulated.json").write_text("{}")
    done = table(str(tmp_path), "--plot", str(tmp_path / "fronts.png"), "--fronts")
    assert done.returncode == 0, done.stderr
    assert "emulated" in done.stdout and "own kernels against" not in done.stdout
    assert "| all | 3 pairs |" in done.stdout and "mean -0.20" in done.stdout
    hv = [line for line in done.stdout.splitlines() if line.startswith("seed 0, 3 γs")]
    assert len(hv) == 1 and "emu / fp32 0.99" in hv[0]  # a little lower at the same bits
    assert (tmp_path / "fronts.png").stat().st_size > 0
    (tmp_path / "emu-g0.1-s0" / "emulated.json").unlink()  # a bf16 run named emu
    done = table(str(tmp_path))
    assert done.returncode == 2 and "only they, hold emulated.json" in done.stderr
    done = table(str(tmp_path), "--fronts")  # a figure's option without the figure
    assert done.returncode == 2 and "give --plot PNG too" in done.stderr
