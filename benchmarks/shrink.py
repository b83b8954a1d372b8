"""Epoch time of a network before and after it compressed, and against its dense twin.

Trains a ``cpu``-width network with a strong γ on synthetic data until channels are cut,
then times the same fixed "epoch" of training steps (the trainer's ``Step``) on the
uncompressed network (``before``), the cut one (``after``) and the cut one's dense twin
(``trainer.surgery.dense_twin``: every residual sum a plain add on the union's widths, the
same function), interleaved in one process with the trainer's process settings (large
tensors kept on the heap, denormals flushed). ``ratio`` = after / before beside
``macs_ratio``, their forward multiply-accumulates; ``twin_ratio`` = after / twin beside
``twin_macs_ratio``: what the cut network's irregular widths cost beyond their MACs. With
``--model`` the cut network is a trained run's ``model.pt`` (e.g. a ``--size-term bops``
trial's) and the uncompressed one is built from its own config: a trial's last epoch against
its first, side by side instead of across a run on a shared machine.

Each is timed in both precisions (``--precision``: fp32, and bf16 autocast as the trainer's
``--precision bf16`` runs it), all six interleaved; the ratios are printed per precision.
``--device cuda`` times them on a GPU. ``--align 8`` adds the cut network with every conv
rounded up to a multiple of 8 channels (``aligned``), the widths ``--cut-align 8`` keeps.

    python -m benchmarks.shrink [--reps 5] [--steps 5] [--model results/run/model.pt]
                                [--device cpu|cuda] [--precision both|fp32|bf16] [--align 8]
"""

import dataclasses

import torch

from benchmarks.common import (
    conv_macs,
    count,
    emit,
    interleaved,
    load_trained,
    model_for,
    parser,
    train_step_fn,
)
from trainer.config import TrainConfig
from trainer.heap import keep_freed_memory
from trainer.network import model_for as trainer_model_for
from trainer.precision import autocast_for
from trainer.surgery import Remap, dense_twin, relayout, slice_bn, slice_layer_out
from trainer.train import train

# as measured before skip_one_bit and the floor (the figures of benchmarks/README.md)
STRONG = TrainConfig(preset="cpu", dataset="synthetic", gamma=2.0, epochs=6, batch_size=128,
                     lr_quant=0.2, init_bits=2.0, synthetic_size=2048, cut_every=5, seed=0,
                     skip_one_bit=False, min_bits=0.0)


def compressed_model(device: str = "cpu"):
    """(the compressed network, its training result) from a short strong-γ run."""
    keep = {}
    result = train(dataclasses.replace(STRONG, device=device),
                   on_epoch=lambda m, s: keep.update(model=s.model), verbose=False)
    return keep["model"], result


def trained_pair(path: str, prog: str = "benchmarks.shrink") -> tuple:
    """(the network saved at ``path``, the uncompressed one of its config, weights kept);
    ``prog`` names the benchmark in an error."""
    small, config = load_trained(path, prog, "--model")
    torch.manual_seed(config.seed)
    full = trainer_model_for(config).to(memory_format=torch.channels_last)
    kept = sum(layer.weight.numel() for _, layer in small.quant_layers()) / small.n0
    return small, full, kept


def aligned_twin(small, full, align: int):
    """``full`` cut to ``small``'s channels with every conv's count rounded up to a multiple
    of ``align`` (the lowest missing original channels added back, as live ones): the widths
    a run with ``--cut-align align`` keeps where ``small``'s run kept these channels."""
    rows = {name: block.conv.out_idx for name, block in small.blocks()}
    remaps: list[Remap] = []
    with torch.no_grad():
        for res in ("res1", "res3"):
            if getattr(small, res).conv1 is None:
                r = getattr(full, res)
                r.conv1 = r.conv2 = None
        for name, block in list(full.blocks()):
            have, n = rows[name], block.conv.weight.shape[0]
            kept = set(have.tolist())
            extra = [i for i in range(n) if i not in kept]
            want = min(n, -(-have.numel() // align) * align)
            keep = torch.cat([have, torch.tensor(extra[:want - have.numel()],
                                                 dtype=have.dtype)]).sort().values
            slice_layer_out(block.conv, keep, remaps)
            slice_bn(block.bn, keep, remaps)
        relayout(full, remaps)
    return full.to(memory_format=torch.channels_last)


def main() -> None:
    p = parser("shrink", __doc__)
    p.add_argument("--reps", type=count, default=5, help="repetitions (%(default)s)")
    p.add_argument("--steps", type=count, default=5,
                   help="training steps per timed epoch (%(default)s)")
    p.add_argument("--batch", type=count, default=512, help="images per batch (%(default)s)")
    p.add_argument("--model", metavar="PATH",
                   help="a trained run's model.pt to time against its uncompressed network "
                        "(default: compress one here, strong gamma, synthetic data)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the networks train (%(default)s)")
    p.add_argument("--align", type=count, default=1,
                   help="also time the cut network with every conv rounded up to a multiple "
                        "of this many channels, as --cut-align keeps them (1: not timed)")
    p.add_argument("--precision", choices=("both", "fp32", "bf16"), default="both",
                   help="the step's precision, or both side by side (%(default)s)")
    args = p.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; leave --device off for the CPU")
    if not cuda:
        torch.set_flush_denormal(True)  # as trainer.train.setup does on a CPU
        keep_freed_memory()
    if args.model:
        small, full, kept = trained_pair(args.model)
    else:
        small, result = compressed_model(args.device)
        full, kept = model_for("cpu"), result["weights_kept_fraction"]
    small, full = small.to(args.device), full.to(args.device)
    x = torch.randn(args.batch, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)

    def epoch(model, precision):
        step = train_step_fn(model, x, y, autocast=autocast_for(args.device, precision))

        def run():
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
        return run

    twin = dense_twin(small)
    precisions = [q for q in ("fp32", "bf16") if args.precision in (q, "both")]
    models = {"after": small, "before": full, "twin": twin}
    if args.align > 1:
        torch.manual_seed(0)
        full_again = (trained_pair(args.model)[1] if args.model else model_for("cpu"))
        models["aligned"] = aligned_twin(small, full_again.to(args.device), args.align)
    t = interleaved({f"{name} {q}": epoch(model, q) for q in precisions
                     for name, model in models.items()}, args.reps)
    timed = {q: {"ratio": round(t[f"after {q}"] / t[f"before {q}"], 3),
                 "twin_ratio": round(t[f"after {q}"] / t[f"twin {q}"], 3),
                 **{f"{name}_epoch_s": round(t[f"{name} {q}"], 3) for name in models}}
             for q in precisions}
    if args.align > 1:
        for q in precisions:
            timed[q]["aligned_ratio"] = round(t[f"aligned {q}"] / t[f"before {q}"], 3)
    if len(precisions) == 2:  # bf16 against fp32, network by network
        timed["bf16_over_fp32"] = {name: round(t[f"{name} bf16"] / t[f"{name} fp32"], 3)
                                   for name in models}
    emit("shrink", {**timed,
                    "macs_ratio": round(conv_macs(small) / conv_macs(full), 3),
                    "twin_macs_ratio": round(conv_macs(small) / conv_macs(twin), 3),
                    **({"aligned_macs_ratio": round(conv_macs(models["aligned"])
                                                    / conv_macs(full), 3),
                        "aligned_widths": {n: layer.weight.shape[0] for n, layer
                                           in models["aligned"].quant_layers()},
                        "align": args.align} if args.align > 1 else {}),
                    "weights_kept_fraction": round(kept, 3),
                    "widths": {name: layer.weight.shape[0] for name, layer in small.quant_layers()},
                    "steps_per_epoch": args.steps, "batch": args.batch, "reps": args.reps,
                    "device": args.device})


if __name__ == "__main__":
    main()
