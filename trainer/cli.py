"""Command line of ``python -m trainer.train``: flags to a TrainConfig, results to --out."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from trainer.config import (
    DATASETS,
    KINDS,
    PRECISIONS,
    PRESET_NAMES,
    PRESETS,
    ConfigError,
    TrainConfig,
    check_writable_folder,
)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line and exits 2, without the usage block."""

    def __init__(self, *args, error_prefix: str = "scnn train", **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(f"{message} (see --help)", self.error_prefix)


def fail(message: str, prog: str = "scnn train") -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


HELP = """\
Train one self-compressing ResNet-9 on CIFAR-10.

Every conv channel learns its own bit depth b and exponent e; the loss is
CE + gamma * Q, Q being the network's size in bits per original weight. Channels that
reach 0 bits are cut out while training, so the network (and each epoch) gets smaller.
A larger --gamma gives a smaller, less accurate network.

examples:
  python -m trainer.train --preset smoke --dataset synthetic       # seconds, no download
  python -m trainer.train --gamma 0.05 --data-dir ../shared/data   # a compressed network
  python -m trainer.train --float-baseline --out results/baseline  # plain float ResNet-9
  python -m trainer.train --init-from results/baseline --gamma 0.02  # compress a trained one
"""


def preset_help() -> str:
    lines = [f"{name}: " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "warmup_fraction")
             for name, p in PRESETS.items()]
    return "; ".join(lines)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m trainer.train", description=HELP,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    p.add_argument("--gamma", type=float, default=d.gamma,
                   help="weight of the size term in CE + gamma*Q (default %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--float-baseline", action="store_const", dest="kind",
                      const="float-baseline", help="plain float ResNet-9, no quantization")
    mode.add_argument("--floor", action="store_const", dest="kind", const="floor",
                      help="one channel per layer: the cost of everything but the network")
    mode.add_argument("--kind", choices=KINDS, help="what to train: the method (compress) or "
                      "a reference: narrow-float (float at --width, sized against the "
                      "preset's width), fixed-bits (every channel at --fixed-bits bits)")
    p.add_argument("--init-from", metavar="PATH",
                   help="start from this trained float network instead of random weights: a "
                        "--float-baseline run's model.pt (or its --out folder, or a "
                        "checkpoint), or a PyTorch state dict of the same ResNet-9; each "
                        "channel's exponent is fitted to its loaded weights. With it the cpu "
                        "preset trains 3 epochs (docs/train.md)")
    p.add_argument("--fixed-bits", type=float,
                   help="bit depth every channel keeps (implies --kind fixed-bits)")
    p.add_argument("--full-width", type=float, help="width whose weights sizes are measured "
                   "against (default: the trial's own; narrow-float: the preset's)")
    p.add_argument("--preset", default=d.preset, metavar="{" + ",".join(PRESET_NAMES) + "}",
                   help=f"defaults for the fields below; auto = paper on a GPU, else cpu. "
                        f"{preset_help()}")
    p.add_argument("--epochs", type=int, help="passes over the training set (preset)")
    p.add_argument("--width", type=float,
                   help="channel multiplier; 1.0 = 64-128-256-512 (preset)")
    p.add_argument("--batch-size", type=int, help="images per step (preset)")
    p.add_argument("--lr", type=float, help="peak SGD learning rate of the weights (preset)")
    p.add_argument("--lr-quant", type=float, help="peak Adam learning rate of b and e (preset)")
    p.add_argument("--warmup-fraction", type=float,
                   help="fraction of training spent ramping the learning rates up from 0 "
                        "(preset)")
    p.add_argument("--train-subset", type=int, help="use the first N training images (0 = all)")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test images")
    p.add_argument("--init-bits", type=float, default=d.init_bits,
                   help="initial bit depth of every channel (default %(default)s)")
    p.add_argument("--size-term", choices=("bits", "bops"), default=d.size_term,
                   help="what the size term Q counts: bits of the weights (storage), or "
                        "bops, each layer's bits times its output's spatial size (compute), "
                        "so gamma buys training and inference time (default %(default)s)")
    p.add_argument("--lr-exp", type=float,
                   help="peak Adam learning rate of the exponents e (default: --lr-quant; "
                        "slower lost in docs/ablation.md)")
    p.add_argument("--snap-bits", action=argparse.BooleanOptionalAction, default=d.snap_bits,
                   help="after training, store each bit depth in the smallest form that gives "
                        "the same weights (default: on)")
    p.add_argument("--half-exponents", action=argparse.BooleanOptionalAction,
                   default=d.half_exponents,
                   help="after training, round each exponent to the nearest float16 (before "
                        "the final test, so the reported accuracy is the stored network's), "
                        "which an export stores in 2 bytes instead of 4 (default: on)")
    p.add_argument("--integer-exponents", action=argparse.BooleanOptionalAction,
                   default=d.integer_exponents,
                   help="after training, round each conv exponent to an integer and fold the "
                        "factor 2^(e - round(e)) into the BatchNorm that follows (the same "
                        "network in eval mode, so the reported accuracy is the stored one), "
                        "which an export stores in 1 byte instead of 2 (default: on)")
    p.add_argument("--hold-range", action=argparse.BooleanOptionalAction, default=d.hold_range,
                   help="learn each channel's bit depth b and clipping range 2^(e+b-1) "
                        "instead of b and e, so the size term drops low-order bits instead of "
                        "clipping the largest weights (default: on)")
    p.add_argument("--skip-one-bit", action=argparse.BooleanOptionalAction,
                   default=d.skip_one_bit,
                   help="a bit depth that falls below 1.58, where the quantizer holds only "
                        "{-1, 0}, drops to 0 at once: the channel is drained and cut instead "
                        "of passing through (default: on; docs/ablation.md)")
    p.add_argument("--min-bits", type=float, default=d.min_bits,
                   help="a bit depth that falls below this drops to 0 at once, so live "
                        "channels keep at least this many bits and the size term buys cut "
                        "channels instead of coarser ones (default %(default)s; 0: only "
                        "--skip-one-bit's 1.58)")
    p.add_argument("--fade", action=argparse.BooleanOptionalAction, default=d.fade,
                   help="a bit depth that falls below --min-bits fades its channel out over "
                        "one more bit (a gate after the BatchNorm, so the loss sees what the "
                        "channel is worth) instead of dropping to 0 at once; the gates fold "
                        "into the BatchNorms after training (default: off; docs/ablation.md)")
    p.add_argument("--ration", type=float, default=d.ration,
                   help="the largest share of a conv's live channels that may die in one "
                        "epoch; of those whose bit depth falls below --min-bits beyond it, "
                        "the highest wait at the floor (default: the preset's, 0.5 for cpu, "
                        "1 (no limit) for the others, and 1 with --fade; docs/ablation.md)")
    p.add_argument("--cut-align", type=int, default=d.cut_align,
                   help="cuts leave each conv a multiple of this many channels, cutting fewer "
                        "dead ones at a time (8 suits a GPU's bf16 convolutions; default "
                        "%(default)s: every dead channel at once)")
    p.add_argument("--gamma-ramp", type=float, default=d.gamma_ramp,
                   help="fraction of training over which gamma ramps up linearly from 0 "
                        "(default: the preset's, 0.5 for cpu, 0 (off) for the others; "
                        "docs/ablation.md)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed (default %(default)s)")
    p.add_argument("--dataset", default=d.dataset, metavar="{" + ",".join(DATASETS) + "}",
                   help="cifar10, or synthetic: a small generated set (default %(default)s)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (or that folder); "
                   "default: download once into ~/.cache/scnn (or $SCNN_DATA_CACHE)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default=d.precision, metavar="{" + ",".join(PRECISIONS) + "}",
                   help="what a training step computes in: fp32, or bf16, bfloat16 autocast "
                        "(convolutions and activations in bfloat16; weights, optimizer state, "
                        "the quantizer's b and e, the size term and BatchNorm statistics stay "
                        "float32). auto (default): bf16 on a GPU, fp32 on a CPU, also on one "
                        "with native bf16 units until bf16's speed is measured on one; on a "
                        "CPU without them bf16 is slower (docs/train.md). The start line says "
                        "which and why")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, help="write trials/epochs/layers.parquet and model.pt here")
    p.add_argument("--quiet", action="store_true", help="no per-epoch table")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if args.kind is None:
        args.kind = "fixed-bits" if args.fixed_bits is not None else "compress"
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})


def check(args: argparse.Namespace) -> tuple[TrainConfig, TrainConfig]:
    """The run ``args`` ask for, as asked and resolved, checked before anything trains:
    raises ConfigError or DataError for what would stop it (the --out folder, the data, a
    start that cannot be loaded)."""
    from trainer.config import resolve

    asked = config_from_args(args)  # train() resolves it again, to say why: auto or asked
    config = resolve(asked)
    if args.out is not None:
        check_writable_folder(args.out, "--out")
    if config.dataset == "cifar10" and config.data_dir:
        from trainer.cifar10 import find_batches

        find_batches(config.data_dir)  # fail now, not after building the model
    if config.init_from:
        from trainer.network import read_start

        read_start(config.init_from, config)  # train() reads it again: a few MB
    return asked, config


def run(argv: list[str] | None = None) -> None:
    """Parse, train, and write results; user mistakes exit 2 with one line."""
    from trainer.cifar10 import DataError

    args = parser().parse_args(argv)
    try:
        asked, config = check(args)
        if args.preset == "auto":
            print(f"scnn: --preset auto chose {config.preset!r} "
                  f"({'GPU found' if config.preset == 'paper' else 'no GPU'})")
        result = _train(asked, args)
    except (ConfigError, DataError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        print("\nscnn: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"scnn: test accuracy {result['test_accuracy']:.2%}, "
          f"{result['bits_fraction']:.3%} of the float network's bits, "
          f"{result['weights_kept_fraction']:.2%} of its weights kept, "
          f"{result['mean_bits']:.2f} bits per kept weight, {result['train_time_s']:.0f} s")


def _train(config: TrainConfig, args: argparse.Namespace) -> dict:
    from trainer.train import train

    final_state = {}

    def keep_state(metrics: dict, state) -> None:
        final_state["state"] = state

    result = train(config, on_epoch=keep_state, verbose=not args.quiet)
    if args.out is not None:
        trial_id = f"train-{time.strftime('%Y%m%d-%H%M%S')}"
        out = args.out
        try:
            write_outputs(out, trial_id, result, final_state["state"])
        except OSError as err:  # the folder went away or filled up while it trained
            import tempfile

            out = Path(tempfile.mkdtemp(prefix=f"scnn-{trial_id}-", dir=Path.cwd()
                                        if os.access(Path.cwd(), os.W_OK) else None))
            print(f"scnn: error: cannot write to {args.out} ({err.strerror or err}); the "
                  f"trained network is saved in {out} instead", file=sys.stderr)
            write_outputs(out, trial_id, result, final_state["state"])
            raise SystemExit(1) from None
        print(f"scnn: wrote {out}/trials.parquet, epochs.parquet, layers.parquet, model.pt")
    return result


def write_outputs(out: Path, trial_id: str, result: dict, state) -> None:
    """--out's files: the three Parquet files and model.pt."""
    from trainer.network import save_model

    write_run(out, trial_id, result)
    save_model(out / "model.pt", state)


def write_run(out: Path, trial_id: str, result: dict, sweep: str = "") -> None:
    """The three Parquet files of a single run, in the schema the sweep also writes."""
    from trainer.results import EPOCH_METRICS, write_results

    trial = {k: v for k, v in result.items() if k not in ("history", "layers")}
    trial.update(sweep=sweep, trial_id=trial_id, status="TERMINATED", error=None)
    epochs = [{"trial_id": trial_id, **{k: m[k] for k in EPOCH_METRICS}}
              for m in result["history"]]
    layers = [{"trial_id": trial_id, **row} for row in result["layers"]]
    write_results(out, [trial], epochs, layers)
