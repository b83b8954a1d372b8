"""How much of an epoch is not the network: one channel per layer vs the ``cpu`` preset.

Runs a short epoch (same data, same steps) of the floor network and of the ``cpu``-preset
network, alternating, and reports the median epoch time of each. ``ratio`` = floor / cpu.

    python -m benchmarks.floor [--reps 3] [--images 5120]
"""

import statistics

from benchmarks.common import count, emit, parser
from trainer.config import TrainConfig
from trainer.data import DataError, find_batches
from trainer.train import train


def epoch_time(kind: str, images: int, dataset: str, data_dir: str | None) -> float:
    config = TrainConfig(preset="cpu", kind=kind, epochs=1, train_subset=images,
                         test_subset=1000, synthetic_size=images, dataset=dataset,
                         data_dir=data_dir)
    return train(config, verbose=False)["history"][0]["epoch_time_s"]


def main() -> None:
    p = parser("floor", __doc__)
    p.add_argument("--reps", type=count, default=3, help="repetitions (%(default)s)")
    p.add_argument("--images", type=count, default=5120,
                   help="training images per epoch (%(default)s)")
    p.add_argument("--data-dir", help="real CIFAR-10 (default: synthetic images)")
    args = p.parse_args()
    if args.data_dir:
        try:
            find_batches(args.data_dir)
        except DataError:
            p.error(f"--data-dir {args.data_dir} holds no cifar-10-batches-py/: pass the "
                    "folder that does, or omit --data-dir for synthetic images")
    dataset = "cifar10" if args.data_dir else "synthetic"
    times = {"floor": [], "cpu": []}
    for _ in range(args.reps):
        times["floor"].append(epoch_time("floor", args.images, dataset, args.data_dir))
        times["cpu"].append(epoch_time("compress", args.images, dataset, args.data_dir))
    floor, cpu = statistics.median(times["floor"]), statistics.median(times["cpu"])
    emit("floor", {"ratio": round(floor / cpu, 3), "floor_epoch_s": round(floor, 3),
                   "cpu_epoch_s": round(cpu, 3), "images": args.images, "dataset": dataset,
                   "reps": args.reps})


if __name__ == "__main__":
    main()
