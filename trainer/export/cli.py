"""``python -m trainer.export SOURCE --out DIR``: the command line of the export.

SOURCE is a run folder (``python -m trainer.train --out DIR``), its ``model.pt``, or a sweep
folder with ``--trial ID`` or ``--front`` (every trial on the sweep's Pareto front of bits
against accuracy, each in OUT/<trial>/), whose checkpoints the sweep finds
(``sweep.checkpoints``). Bad input exits 2 with one line and writes nothing; a failed
export exits 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from trainer.cli import OneLineParser, fail
from trainer.config import ConfigError
from trainer.export.dense import PAD_CHOICES
from trainer.export.sources import ExportError
from trainer.export.write import PROG, plan, run_jobs

HELP = """\
Export trained networks as files a user can deploy, and check them.

Writes into --out: weights.safetensors (each live channel's integer weights bit-packed at
its bit depth ceil(b+), with bit depths, exponents, channel indices and BatchNorm; the
packed payload is size_bits / 8 bytes), model.onnx (the slim dense float network: cut
channels gone, weights dequantized, BatchNorm folded), model.int8.onnx (the same network
for onnxruntime's int8 kernels, QDQ: uint8 activations calibrated on 512 training images,
int8 weights that are the trained integers; a layer with a row over 8 bits stays float)
and export.json (sizes, and the test accuracy and speed of both ONNX files, onnxruntime).
Exit status 1 when model.onnx's accuracy is more than 0.05 points from the reported one
(export.json then says failed), 2 for bad input; int8_status says whether model.int8.onnx's
is within 0.3 points of it. A float network (a float-baseline or narrow-float run or trial)
has no integers: it gets model.onnx and onnxruntime's own int8 of it (quantize_static).

examples:
  python -m trainer.export results/run1 --out exported/run1          # a trainer --out folder
  python -m trainer.export results/run1/model.pt --out exported/run1
  python -m trainer.export results/cpu-12 --trial 7dd1a_00011 --out exported/t11
  python -m trainer.export results/cpu-12 --front --out exported/front
"""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m trainer.export", description=HELP,
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      error_prefix=PROG)
    p.add_argument("source", type=Path, metavar="SOURCE",
                   help="a run folder (python -m trainer.train --out DIR), its model.pt, or a "
                        "sweep folder (with --trial or --front)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", help="the sweep trial to export (trial_id in trials.parquet)")
    which.add_argument("--front", action="store_true",
                       help="export every trial on the sweep's Pareto front of bits vs "
                            "accuracy, each into OUT/<trial_id>/")
    p.add_argument("--data-dir", help="where CIFAR-10 is here (default: the run's --data-dir)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for PyTorch and onnxruntime (default: their choice)")
    p.add_argument("--pad-to", type=int, choices=PAD_CHOICES, default=None,
                   help="pad every activation of the ONNX files with zero channels to a "
                        "multiple of this (1: none); default: this CPU's onnxruntime NCHWc "
                        "block, 16 with AVX-512F, 8 with AVX2 (export.json's padding says "
                        "which and why)")
    p.add_argument("--int8-bits", type=int, choices=(7, 8), default=None,
                   help="layers whose trained integers fit this many bits go into "
                        "model.int8.onnx as int8, the others stay float; default: this CPU's, "
                        "8 with VNNI or AMX (int32 sums), else 7 (onnxruntime's AVX2 kernels "
                        "saturate 8-bit weights); give 8 for a VNNI target")
    return p


def main(argv: list[str] | None = None) -> None:
    from trainer.cifar10 import DataError

    args = parser().parse_args(argv)
    try:
        jobs = plan(args.source, args.out, args.trial, args.front, args.data_dir, args.threads,
                    sweep_sources())
    except (ExportError, ConfigError, DataError) as err:
        fail(str(err), prog=PROG)
    if args.threads:
        torch.set_num_threads(args.threads)
    raise SystemExit(1 if run_jobs(jobs, args.threads, pad_to=args.pad_to,
                                   int8_bits=args.int8_bits) else 0)


def sweep_sources():
    """The sweep's own finder of its trials' checkpoints (``sweep.checkpoints``).

    The command is where the export meets the sweep: a sweep folder's layout is the sweep's
    to know, so the library modules of ``trainer`` never import it; this command does, to
    keep reading sweep folders as it always has (tests/test_layout.py allows this one
    import).
    """
    from sweep.checkpoints import sweep_sources as find

    return find
