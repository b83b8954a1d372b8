"""Which of the parts that bf16 autocast leaves in float32 matter (issue 36, part 1).

    python docs/ablation-precision/parts.py run PART [trainer.train flags ... --out DIR]
    python docs/ablation-precision/parts.py table RUNS_DIR

``run`` trains as ``python -m trainer.train`` does, in float32 arithmetic, with one part held
in bfloat16: after every optimizer step (and the quantizer's rules after it) that part's
tensors are rounded to the nearest bf16, which is what storing them in bf16 does; ``size``
computes the size term Q from bf16 b and coefficients instead. The arithmetic stays float32,
so a run costs what a float32 run costs on any CPU and only the part's precision differs.

PART is one of:
  none       nothing: the float32 run, for reference
  weights    the conv and head weights (the optimizer's master copies)
  bn         BatchNorm's weight and bias, and the head's bias
  quant      the quantizer's b and e
  bn_stats   BatchNorm's running mean and variance
  optimizer  the optimizers' state: SGD's momentum, Adam's two moments
  size       the size term Q (its value and its gradient to b)

Every run also counts, for each stored part, the share of the elements an optimizer step
changed whose change bf16 storage rounds away (the old value rounded to bf16, plus the
change, rounds back to it); in the ``none`` run that is what bf16 would lose on the float32
path. It lands in DIR/parts.json
beside trainer.train's Parquet files. ``table`` prints a markdown table of RUNS_DIR's
folders named ``{PART}-s{SEED}``: accuracy and size against ``none`` of the same seed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# the trainer of the tree this file is in, not whichever one the environment installed
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

STORED = ("weights", "bn", "quant", "bn_stats", "optimizer")
PARTS = ("none", *STORED, "size")


def stored_tensors(model, opts: list[torch.optim.Optimizer]) -> dict[str, dict[str, torch.Tensor]]:
    """Each stored part's tensors by name, as the step leaves them (cuts replace them)."""
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in STORED}
    for name, p in model.named_parameters():
        if name.endswith((".b", ".e")):
            parts["quant"][name] = p.data
        elif p.dim() > 1:
            parts["weights"][name] = p.data
        else:
            parts["bn"][name] = p.data
    for name, buf in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            parts["bn_stats"][name] = buf
    names = {id(p): n for n, p in model.named_parameters()}
    for opt in opts:
        for p, state in opt.state.items():
            for key, t in state.items():
                if key != "step" and torch.is_tensor(t) and t.is_floating_point():
                    parts["optimizer"][f"{names.get(id(p), id(p))}.{key}"] = t
    return parts


def bf16(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to the nearest bfloat16 (ties to even), as float32."""
    return t.to(torch.bfloat16).float()


class Holder:
    """Rounds ``part`` to bf16 after each step and counts, for every stored part, the changed
    elements whose change bf16 would round away."""

    def __init__(self, part: str):
        self.part = part
        self.before: dict[str, torch.Tensor] = {}
        self.changed = dict.fromkeys(STORED, 0)
        self.lost = dict.fromkeys(STORED, 0)

    @torch.no_grad()
    def __call__(self, model, opts) -> None:
        for part, tensors in stored_tensors(model, opts).items():
            for name, t in tensors.items():
                old = self.before.get(name)
                if old is not None and old.shape == t.shape:  # a cut changes the shape
                    # stored in bf16, old would be bf16(old), and this step's change is lost
                    # when bf16(old) + change rounds back to it
                    moved, old16 = t != old, bf16(old)
                    self.changed[part] += int(moved.sum())
                    self.lost[part] += int((moved & (bf16(old16 + (t - old)) == old16)).sum())
                if part == self.part:
                    t.copy_(bf16(t))
                self.before[name] = t.clone()

    def shares(self) -> dict[str, dict]:
        return {p: {"changed": self.changed[p], "lost": self.lost[p],
                    "lost_share": self.lost[p] / self.changed[p] if self.changed[p] else None}
                for p in STORED}


plain_loss_size = None  # ResNet9.loss_size, kept by run() when it replaces it


def loss_size_bf16(model, size_term: str = "bits") -> torch.Tensor:
    """``ResNet9.loss_size`` of a quantized network, computed from bf16 b and coefficients."""
    named = model.live_inputs()
    if not all(layer.quantized for _, layer, _ in named):  # a float network: nothing to hold
        return plain_loss_size(model, size_term)
    with torch.no_grad():
        live_in = torch.stack([live.sum() for _, _, live in named])
        per_layer, channel_layer = model.size_coefficients(size_term)
        coef = (live_in * per_layer).index_select(0, channel_layer)
    b = torch.cat([layer.b for _, layer, _ in named]).to(torch.bfloat16)
    return (F.relu(b) * coef.to(torch.bfloat16)).sum().float()


def run(part: str, argv: list[str]) -> None:
    import trainer.train as T
    from trainer.cli import run as train_cli
    from trainer.model import ResNet9

    if part not in PARTS:
        fail(f"unknown part {part!r}: one of {', '.join(PARTS)}")
    if "--out" not in argv[:-1]:
        fail("give trainer.train's --out DIR: parts.json goes there")
    out = Path(argv[argv.index("--out") + 1])
    holder = Holder(part)
    plain_step = T.step_optimizers

    def step_optimizers(model, opts) -> None:
        plain_step(model, opts)
        holder(model, opts)

    T.step_optimizers = step_optimizers
    if part == "size":
        global plain_loss_size
        plain_loss_size, ResNet9.loss_size = ResNet9.loss_size, loss_size_bf16
    print(f"parts.py: {part} held in bf16" if part != "none" else "parts.py: all float32")
    train_cli(argv)
    (out / "parts.json").write_text(json.dumps({"part": part, "lost": holder.shares()},
                                               indent=1))


def table(runs: Path) -> None:
    import pandas as pd

    if not runs.is_dir():
        fail(f"{runs} is not a folder: give the parent of the {{PART}}-s{{SEED}} run folders")
    rows = []
    for folder in sorted(runs.iterdir()):
        m = re.fullmatch(r"(\w+?)-s(\d+)", folder.name)
        if not m or not (folder / "parts.json").is_file():
            continue
        t = pd.read_parquet(folder / "trials.parquet").iloc[0]
        lost = json.loads((folder / "parts.json").read_text())["lost"]
        rows.append({"part": m.group(1), "seed": int(m.group(2)),
                     "accuracy": 100 * t["test_accuracy"], "bits": 100 * t["bits_fraction"],
                     "weights": 100 * t["weights_kept_fraction"], "lost": lost})
    if not rows:
        fail(f"no finished {{PART}}-s{{SEED}} runs in {runs}")
    df = pd.DataFrame(rows)
    ref = df[df.part == "none"].set_index("seed")
    print("| held in bf16 | seed | accuracy % | bits % | weights kept % | Δ accuracy (points) "
          "| bits / float32's | updates bf16 rounds away |")
    print("|---|---|---|---|---|---|---|---|")
    for r in df.sort_values(["part", "seed"]).itertuples():
        base = ref.loc[r.seed] if r.seed in ref.index else None
        d_acc = f"{r.accuracy - base.accuracy:+.2f}" if base is not None else "n/a"
        ratio = f"{r.bits / base.bits:.3f}" if base is not None else "n/a"
        shown = STORED if r.part == "none" else (r.part,) if r.part in STORED else ()
        lost = ", ".join(f"{p} {r.lost[p]['lost_share']:.1%}" for p in shown
                         if r.lost[p]["lost_share"] is not None) or "n/a"
        print(f"| {r.part} | {r.seed} | {r.accuracy:.2f} | {r.bits:.3f} | {r.weights:.2f} "
              f"| {d_acc} | {ratio} | {lost} |")


def fail(message: str) -> None:
    print(f"parts.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 3 and sys.argv[1] == "table":
        table(Path(sys.argv[2]))
    else:
        fail("usage: parts.py run PART [trainer.train flags] --out DIR | parts.py table RUNS")
