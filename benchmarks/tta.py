"""What test-time augmentation would add to a trained network's test accuracy.

The trainer tests each network alone (``test_accuracy``: one view of each test image), and
so does every figure of this project. Page's later recipes and airbench report accuracy
with test-time augmentation instead: the logits of a few views of each image averaged. This
measures that gap for saved networks, for issue 10's float baseline at >= 92 % on the
shared (JPEG) copy: it changes nothing the trainer reports.

Per network (the ``model.pt`` of a ``trainer.train --out`` folder), three accuracies on the
images of its final test (``trainer.data.test_set``: the whole test set or its preset's
subset; a synthetic-data run's own set), eval mode, as the trainer evaluates
(channels_last, batches of 1000):

* ``plain``: the network alone (the trainer's final test; the two must agree);
* ``flip``: the mean of the image's and its mirror image's logits (airbench's level 1);
* ``flip_translate``: half ``flip``, half the mean of ``flip`` on the image shifted one
  pixel up-left and one down-right, reflect-padded (airbench's level 2: six views).

One JSON line per network; its headline, ``gain_flip`` and ``gain_flip_translate``, are the
points each adds over ``plain``.

    python -m benchmarks.tta RUN/model.pt [RUN2/model.pt ...] --data-dir ../shared/data
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import emit, load_trained, parser
from trainer import data as D
from trainer.cli import fail
from trainer.data import batches, test_set
from trainer.model import ResNet9

VIEWS = ("plain", "flip", "flip_translate")


def _cl(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def view_logits(model: ResNet9, x: Tensor) -> dict[str, Tensor]:
    """Logits (B, classes) of each way of looking at the batch ``x`` (normalised images)."""
    plain = model(x).float()
    flip = 0.5 * plain + 0.5 * model(_cl(x.flip(3))).float()
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [_cl(padded[:, :, :32, :32]), _cl(padded[:, :, 2:, 2:])]
    translate = sum(0.5 * model(s).float() + 0.5 * model(_cl(s.flip(3))).float()
                    for s in shifted) / len(shifted)
    return {"plain": plain, "flip": flip, "flip_translate": 0.5 * flip + 0.5 * translate}


@torch.no_grad()
def tta_accuracy(model: ResNet9, x: Tensor, y: Tensor,
                 autocast: Callable = nullcontext) -> dict[str, float]:
    """Test accuracy (fraction correct) of ``model`` under each of ``VIEWS`` on the uint8
    images ``x`` and labels ``y`` (``trainer.data.test_set``), normalised in batches of
    1000 as the trainer's test batches and moved to the model's device; leaves the model
    in the mode it found it in."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = dict.fromkeys(VIEWS, 0)
    for start, xb in zip(range(0, len(y), 1000), batches(x, 1000), strict=True):
        yb = y[start:start + 1000].to(device)
        with autocast():
            logits = view_logits(model, _cl(xb.to(device)))
        for name, z in logits.items():
            correct[name] += int((z.argmax(1) == yb).sum())
    model.train(was_training)
    return {name: c / len(y) for name, c in correct.items()}


def main() -> None:
    p = parser("tta", __doc__)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model.pt files written by trainer.train --out")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (e.g. "
                   "../shared/data; default: the run's own --data-dir, else download it)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    prog = "benchmarks.tta"
    if args.threads < 0:
        fail(f"--threads {args.threads}: give 0 (torch's default) or more", prog=prog)
    nets = [(path, *load_trained(path, prog, "MODEL")) for path in args.models]
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # every network's test set before any is measured: a bad --data-dir fails first
        tests = [test_set(config, args.data_dir) for _, _, config in nets]
    except D.DataError as err:
        fail(str(err), prog=prog)
    for (path, model, config), (x, y) in zip(nets, tests, strict=True):
        acc = tta_accuracy(model, x, y)
        emit("tta", {"gain_flip": round(100 * (acc["flip"] - acc["plain"]), 2),
                     "gain_flip_translate": round(100 * (acc["flip_translate"] - acc["plain"]), 2),
                     **{name: round(a, 4) for name, a in acc.items()}, "model": path,
                     "kind": config.kind, "preset": config.preset, "width": config.width,
                     "epochs": config.epochs, "gamma": config.gamma, "test_images": len(y)})

if __name__ == "__main__":
    main()
