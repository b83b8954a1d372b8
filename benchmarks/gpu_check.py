"""One trial on a GPU, timed per epoch, with its peak GPU memory: the GPU check's trial step.

Runs ``trainer.train`` in this process (so the CUDA allocator's peak is this trial's) and
prints one JSON line per epoch and one for the trial: seconds, test accuracy, bits, peak
GPU memory (``torch.cuda.max_memory_allocated``, GiB); with ``--tta``, after the trial's
time and peak are taken, the final network's accuracy with test-time augmentation too
(``benchmarks.tta``). Used by ``benchmarks/gpu_check.sh``.

    python -m benchmarks.gpu_check --kind float-baseline --data-dir data [--epochs 24]
"""

import json
import os
import time

import torch

from benchmarks.common import parser
from benchmarks.tta import tta_accuracy
from trainer.config import KINDS, ConfigError, TrainConfig, resolve
from trainer.data import test_set
from trainer.precision import autocast_for
from trainer.train import train


def main() -> None:
    p = parser("gpu_check", __doc__)
    p.add_argument("--kind", choices=KINDS, default="compress", help="trial kind (compress)")
    p.add_argument("--gamma", type=float, default=0.05, help="gamma of a compress trial")
    p.add_argument("--preset", default="paper", help="preset (%(default)s)")
    p.add_argument("--epochs", type=int, help="epochs (default: the preset's)")
    p.add_argument("--width", type=float, help="channel multiplier (narrow-float: below the "
                   "preset's; default: the preset's)")
    p.add_argument("--fixed-bits", type=float, help="bit depth of a fixed-bits trial")
    p.add_argument("--min-bits", type=float, help="live channels keep at least this many bits "
                   "(default: the trainer's)")
    p.add_argument("--cut-align", type=int, default=1,
                   help="cuts leave each conv a multiple of this many channels (%(default)s)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture the training step in a CUDA graph (TrainConfig.cuda_graphs, "
                        "re-captured after each cut)")
    p.add_argument("--tta", action="store_true",
                   help="also test the final network with test-time augmentation "
                        "(benchmarks.tta: flip, flip and translate); the trial line gains "
                        "test_accuracy_flip and test_accuracy_flip_translate")
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    args = p.parse_args()
    config = TrainConfig(kind=args.kind, gamma=args.gamma, preset=args.preset,
                         data_dir=args.data_dir, device="cuda", fixed_bits=args.fixed_bits,
                         epochs=args.epochs, width=args.width, cut_align=args.cut_align,
                         cuda_graphs=args.cuda_graphs,
                         **({} if args.min_bits is None else {"min_bits": args.min_bits}))
    try:  # bad input is said on one line before anything runs, GPU or not
        resolved = resolve(config, has_gpu=True)
    except ConfigError as err:
        p.error(str(err))
    if not torch.cuda.is_available():
        p.error("no CUDA GPU is visible: this check is for a GPU machine")
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()

    final: dict = {}

    def on_epoch(m: dict, state) -> None:
        final["model"] = state.model
        print(json.dumps({"kind": args.kind, "gamma": args.gamma, "width": args.width,
                          "cut_align": args.cut_align, "min_bits": config.min_bits,
                          "cuda_graphs": args.cuda_graphs,
                          "fixed_bits": args.fixed_bits, "epoch": m["epoch"],
                          "epoch_s": round(m["epoch_time_s"], 2),
                          "test_accuracy": m["test_accuracy"],
                          "bits_fraction": round(m["bits_fraction"], 4),
                          "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}),
              flush=True)

    result = train(config, on_epoch=on_epoch, verbose=False)
    trial_s, peak_gib = time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30
    tta = {}
    if args.tta:  # the network as the final test saw it, under the trainer's autocast
        x, y = test_set(resolved, args.data_dir)  # the final test's images
        acc = tta_accuracy(final["model"], x, y, autocast_for("cuda", resolved.precision))
        tta = {"test_accuracy_again": acc["plain"], "test_accuracy_flip": acc["flip"],
               "test_accuracy_flip_translate": acc["flip_translate"]}
    print(json.dumps({"kind": args.kind, "gamma": args.gamma, "width": args.width,
                      "fixed_bits": args.fixed_bits, "cut_align": args.cut_align,
                      "cuda_graphs": args.cuda_graphs,
                      "trial_s": round(trial_s, 1),
                      "train_s": round(result["train_time_s"], 1),
                      "test_accuracy": result["test_accuracy"],
                      "bits_fraction": result["bits_fraction"],
                      "weights_kept_fraction": result["weights_kept_fraction"], **tta,
                      "peak_gib": round(peak_gib, 2),
                      "device": result["device"], "torch": torch.__version__,
                      "code_version": result["code_version"],
                      "trainer": os.path.dirname(os.path.abspath(train.__code__.co_filename))}),
          flush=True)  # "trainer": which trainer/ ran (gpu_check.sh's BEFORE runs another)


if __name__ == "__main__":
    main()
