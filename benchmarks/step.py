"""Seconds per training step as the trainer runs it, and how busy the device is meanwhile.

A `paper`-preset compress trial on an H100 takes 2-3 times the float trial's time per
epoch while its extra arithmetic is small (benchmarks/README.md): its step waits on the
host. This times ``trainer.train.Step`` alone, on random batches, for the float network,
the compress network, and (on a GPU) the compress network's step captured in a CUDA graph
(``trainer.graphs.GraphedStep``, ``TrainConfig.cuda_graphs``), interleaved; and, on a GPU,
the share of each step's wall time the GPU spends in kernels (torch.profiler), ``busy_*``:
near 1, the step waits on the GPU; far below, on the host.

``ratio`` = seconds per compress step captured / eager (on a CPU, where nothing is
captured: compress / float).

    python -m benchmarks.step [--preset paper] [--steps 20] [--reps 3]
"""

from __future__ import annotations

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import count, emit, interleaved, parser
from trainer.config import TrainConfig, resolve
from trainer.graphs import GraphedStep
from trainer.heap import keep_freed_memory
from trainer.network import model_for
from trainer.train import Step, autocast_for, make_optimizers, set_lr


def make_step(preset: str, kind: str, device: torch.device, graphs: bool, steps: int):
    """A function running ``steps`` training steps of a fresh ``kind`` network."""
    config = resolve(TrainConfig(preset=preset, kind=kind, gamma=0.05, cuda_graphs=graphs),
                     has_gpu=device.type == "cuda")
    torch.manual_seed(0)
    model = model_for(config).to(device).to(memory_format=torch.channels_last)
    opts = make_optimizers(model, config)
    cuda = device.type == "cuda"
    step = Step(model, opts, config, autocast_for(device.type, config.precision, graphs),
                torch.zeros((), device=device))
    run = GraphedStep(step, step.zero_grad) if graphs else None
    x = torch.randn(config.batch_size, 3, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (config.batch_size,), device=device)

    def steps_fn() -> None:
        for _ in range(steps):
            set_lr(opts, config, 0.5)
            step.gamma.fill_(0.05)
            if run is None:
                step.zero_grad()
                step(x, y)
            else:
                run(x, y)
        if cuda:
            torch.cuda.synchronize()
    return steps_fn


def busy(fn, seconds: float) -> float:
    """The share of ``seconds`` (one call's wall time) the GPU spent in kernels."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
    kernel_us = sum(e.device_time_total for e in prof.events()  # the kernels themselves
                    if e.device_type == DeviceType.CUDA)
    return kernel_us / 1e6 / seconds


def main() -> None:
    p = parser("step", __doc__)
    p.add_argument("--preset", default="paper", choices=("paper", "cpu", "smoke"),
                   help="network width and batch (%(default)s)")
    p.add_argument("--steps", type=count, default=20, help="steps per timed call "
                   "(%(default)s)")
    p.add_argument("--reps", type=count, default=3, help="timed calls of each (%(default)s)")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_flush_denormal(True)
        keep_freed_memory()
    fns = {"float": make_step(args.preset, "float-baseline", device, False, args.steps),
           "compress": make_step(args.preset, "compress", device, False, args.steps)}
    if cuda:
        fns["compress_graph"] = make_step(args.preset, "compress", device, True, args.steps)
    t = {k: v / args.steps for k, v in interleaved(fns, args.reps).items()}
    figures = {f"step_s_{k}": round(v, 5) for k, v in t.items()}
    if cuda:
        figures |= {f"busy_{k}": round(busy(fns[k], t[k] * args.steps), 3) for k in fns}
    ratio = t["compress_graph"] / t["compress"] if cuda else t["compress"] / t["float"]
    emit("step", {"ratio": round(ratio, 3), **figures, "preset": args.preset,
                  "steps": args.steps, "reps": args.reps, "device": device.type})


if __name__ == "__main__":
    main()
