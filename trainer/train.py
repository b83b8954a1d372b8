"""Train one self-compressing ResNet-9: ``python -m trainer.train --gamma 0.05``.

The loop reads top to bottom: a ``Step`` (forward, loss CE + gamma * Q + L1 on dead
channels' constant outputs, backward, optimizer steps; on a GPU with ``cuda_graphs`` one
captured CUDA graph), cut dead channels, report. ``train()`` calls
``on_epoch(metrics, state)`` after every epoch; ``state.state_dict()`` is a checkpoint
that ``train(config, resume=...)`` continues from.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from trainer import data as D
from trainer.config import ConfigError, TrainConfig, ramp_words, ration_words, resolve
from trainer.graphs import GraphedStep, sgd_step
from trainer.heap import keep_freed_memory
from trainer.model import ResNet9
from trainer.network import load_start, model_for, read_start
from trainer.precision import autocast_for, precision_words
from trainer.quant import after_step, bits_before_step, finish_quantizers, set_rations
from trainer.report import Progress, channels, layer_rows, size_metrics, table_header, table_row
from trainer.surgery import apply_layout, cut_dead_channels

EpochCallback = Callable[[dict, "TrainState"], None]


@dataclass
class TrainState:
    """Everything a run needs to continue after a restart."""

    config: TrainConfig
    model: ResNet9
    optimizers: list[torch.optim.Optimizer]
    gen: torch.Generator  # data order and augmentation
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    time_total_s: float = 0.0  # wall time spent in earlier epochs (across restarts)
    history: list[dict] = field(default_factory=list)  # per-epoch metrics so far

    def state_dict(self) -> dict:
        """A checkpoint: config, live-channel layout, weights, optimizer and RNG state."""
        return {"config": dataclasses.asdict(self.config), "layout": self.model.layout(),
                "model": self.model.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers],
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "epoch": self.epoch, "step": self.step, "time_total_s": self.time_total_s,
                "history": list(self.history)}


def pick_device(name: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
    return device


def load_data(config: TrainConfig, device: torch.device) -> D.DeviceData:
    if config.dataset == "synthetic":
        arrays = D.make_synthetic(config.synthetic_size, config.seed)
    else:
        arrays = D.load_cifar10(config.data_dir)
    return D.to_device(arrays, device, config.train_subset or 0, config.test_subset or 0)


def make_optimizers(model: ResNet9, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """SGD Nesterov for weights and BatchNorm (Page's recipe); Adam for b and e, no decay.

    Each parameter group carries its peak learning rate (``peak_lr``) for the schedule.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    bits = [p for n, p in named if n.endswith(".b")]
    exps = [p for n, p in named if n.endswith(".e")]
    quant_ids = {id(p) for p in bits + exps}
    weights = [p for _, p in named if id(p) not in quant_ids]
    # fused: each optimizer's whole update in one kernel (the foreach form issued a dozen
    # multi-tensor operations and 36 step-count reads for Adam, a single-tensor loop ~220;
    # a compress step's optimizer phase takes 0.56 ms of host against 0.89 ms foreach:
    # benchmarks.host; docs/benchmarks-history.md "Every layer's quantizer in one pass")
    # cuda_graphs: every group's learning rate a tensor of its own, which set_lr fills and a
    # captured step reads; Adam then keeps its step counts on the GPU (capturable), and the
    # weights step with graphs.sgd_step (both multi-tensor, foreach)
    graphs = config.cuda_graphs
    impl = {"foreach": True} if graphs else {"fused": True}
    device = next(model.parameters()).device

    def lr(value: float) -> float | torch.Tensor:
        return torch.tensor(value, device=device) if graphs else value

    opts: list[torch.optim.Optimizer] = [torch.optim.SGD(
        [{"params": weights, "peak_lr": config.lr, "lr": lr(config.lr)}], lr=config.lr,
        momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay, **impl)]
    lr_exp = config.lr_quant if config.lr_exp is None else config.lr_exp
    groups = [{"params": ps, "weight_decay": 0.0, "peak_lr": peak, "lr": lr(peak)}
              for ps, peak in ((bits, config.lr_quant), (exps, lr_exp)) if ps]
    if groups:
        opts.append(torch.optim.Adam(groups, lr=config.lr_quant, capturable=graphs, **impl))
    return opts


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Piecewise linear: 0 -> 1 over the warm-up, then 1 -> 0 at the last step."""
    peak = max(warmup_fraction * total, 1.0)
    if step < peak:
        return step / peak
    return max(0.0, (total - step) / max(total - peak, 1.0))


def set_lr(optimizers: list[torch.optim.Optimizer], config: TrainConfig, factor: float) -> float:
    """Every group at ``factor`` times its peak; returns the weights' learning rate."""
    for opt in optimizers:
        for group in opt.param_groups:
            if torch.is_tensor(group["lr"]):  # cuda_graphs: the tensor a captured step reads
                group["lr"].fill_(group["peak_lr"] * factor)
            else:
                group["lr"] = group["peak_lr"] * factor
    return config.lr * factor


def step_optimizers(model: ResNet9, optimizers: list[torch.optim.Optimizer]) -> None:
    """One step of every optimizer, then the quantizer's rules (``quant.after_step``:
    hold-range layers move e against b's change, a b that fell below its floor goes to 0,
    a main-path conv keeps a channel). An SGD whose learning rate is a tensor
    (cuda_graphs) steps with ``graphs.sgd_step``."""
    b_before = bits_before_step(model)
    for opt in optimizers:
        tensor_lr = torch.is_tensor(opt.param_groups[0]["lr"])
        if isinstance(opt, torch.optim.SGD) and tensor_lr:
            sgd_step(opt)
        else:
            opt.step()
    after_step(model, b_before)


def gamma_at(step: int, total: int, config: TrainConfig) -> float:
    """The size term's weight at ``step``: gamma, ramped up linearly over ``gamma_ramp``."""
    ramp = config.gamma_ramp * total
    return config.gamma * min(1.0, step / ramp) if ramp >= 1 else config.gamma


@torch.no_grad()
def evaluate(model: ResNet9, data: D.DeviceData, autocast, channels_last: bool) -> float:
    """Test accuracy (fraction correct), eval mode."""
    model.eval()
    correct = torch.zeros((), device=data.y_test.device)
    for x, y in D.test_batches(data, channels_last=channels_last):
        with autocast():
            correct += (model(x).argmax(1) == y).sum()
    model.train()
    return float(correct) / data.y_test.numel()


def setup(config: TrainConfig, resume: dict | None) -> tuple[TrainState, D.DeviceData]:
    """Build data, model and optimizers for ``config``, restored from ``resume`` if given."""
    device = pick_device(config.device)
    if config.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"cuda_graphs needs a CUDA device, not {device}: leave it off")
    if config.cuda_graphs and resume is not None:
        raise ConfigError("cuda_graphs does not resume from a checkpoint yet: leave it off")
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        # As the lr decays, tiny updates leave denormal floats that slowed a CPU epoch 3x.
        torch.set_flush_denormal(True)
        # Large activations from the heap, not fresh pages each step (docs/benchmarks-history.md)
        keep_freed_memory()
    torch.manual_seed(config.seed)
    start = read_start(config.init_from, config) if config.init_from and resume is None else None
    data = load_data(config, device)
    model = model_for(config)
    if start is not None:
        load_start(model, start)
    model = model.to(device)
    if resume is not None:
        apply_layout(model, resume["layout"])
        model.load_state_dict(resume["model"])
    # channels_last on CPU too: oneDNN's convolutions run faster in it (a cpu-width compress
    # step 1.33 -> 1.11 s, a float one 1.22 -> 0.80 s: benchmarks/README.md); cuts keep it.
    model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(config.seed)
    state = TrainState(config, model, make_optimizers(model, config), gen)
    if resume is not None:
        for opt, saved in zip(state.optimizers, resume["optimizers"], strict=True):
            opt.load_state_dict(saved)
        gen.set_state(resume["gen"])
        torch.set_rng_state(resume["torch_rng"])
        state.epoch, state.step = resume["epoch"], resume["step"]
        state.time_total_s, state.history = resume["time_total_s"], list(resume["history"])
    return state, data


def train(config: TrainConfig, on_epoch: EpochCallback | None = None,
          resume: dict | None = None, verbose: bool = True) -> dict:
    """Train one network; return the final metrics, per-epoch history and per-layer rows."""
    asked = config.precision  # auto, or what the user (or the sweep's recipe) set
    config = resolve(config)
    state, data = setup(config, resume)
    model, opts, c = state.model, state.optimizers, config
    device_type = next(model.parameters()).device.type
    cuda = device_type == "cuda"
    autocast = autocast_for(device_type, c.precision, c.cuda_graphs)
    steps_per_epoch = max(data.n_train // c.batch_size, 1)
    total_steps = steps_per_epoch * c.epochs
    if verbose and state.epoch == 0:
        print(describe(config, model, data, asked))
    if verbose:
        print(table_header(), flush=True)
    started = time.perf_counter() - state.time_total_s
    lr = 0.0
    step = Step(model, opts, c, autocast, torch.zeros((), device=data.y_train.device))
    graphed = GraphedStep(step, step.zero_grad) if c.cuda_graphs else None
    last = max(c.epochs, 1)  # --epochs 0 (with --init-from): the loaded network, measured
    for epoch in range(state.epoch + 1, last + 1):
        epoch_start = time.perf_counter()
        if c.kind == "compress" and c.ration < 1:
            set_rations(model, c.ration)
        progress = Progress(steps_per_epoch) if verbose else None
        step.loss_sum.zero_()  # the epoch's summed CE, on the device
        batches = D.train_batches(data, c.batch_size, state.gen, c.cutout,
                                  channels_last=True) if c.epochs else []
        for i, (x, y) in enumerate(batches, start=1):
            lr = set_lr(opts, c, lr_factor(state.step, total_steps, c.warmup_fraction))
            step.gamma.fill_(gamma_at(state.step, total_steps, c))
            if graphed is None:
                step.zero_grad()
                step(x, y)
            else:
                graphed(x, y)
            state.step += 1
            if state.step % c.cut_every == 0:
                if cut_dead_channels(model, opts, c.cut_align) and graphed is not None:
                    graphed.invalidate()
            if progress:
                progress.update(i, epoch)
        if epoch == last:
            finish_quantizers(model, c)
        if cut_dead_channels(model, opts, c.cut_align) and graphed is not None:
            graphed.invalidate()
        if cuda:
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - epoch_start
        if progress:
            progress.close()
        metrics = {"epoch": epoch if c.epochs else 0,
                   "train_loss": float(step.loss_sum) / steps_per_epoch if c.epochs else math.nan,
                   "test_accuracy": evaluate(model, data, autocast, True), **size_metrics(model)}
        per_layer = channels(model)
        metrics.update(channels_kept=sum(per_layer.values()), epoch_time_s=epoch_time,
                       time_total_s=time.perf_counter() - started, lr=lr, channels=per_layer)
        state.epoch, state.time_total_s = epoch, metrics["time_total_s"]
        state.history.append(metrics)
        if verbose:
            print(table_row(metrics), flush=True)
        if on_epoch is not None:
            on_epoch(metrics, state)
    return summarize(state, data)


class Step:
    """One training step on a batch: forward, loss (CE + gamma * Q + L1 on dead channels'
    constant outputs), backward, optimizer steps; the batch's CE added to ``loss_sum``.
    It reads nothing back to the host, so ``graphs.GraphedStep`` can capture it; gamma is
    the tensor ``self.gamma``, filled before each step. ``__call__`` runs the phases
    ``forward``, ``loss``, ``backward`` and ``optimize``, which a benchmark may time one
    by one (``benchmarks.host``)."""

    def __init__(self, model: ResNet9, opts: list[torch.optim.Optimizer], config: TrainConfig,
                 autocast: Callable, loss_sum: torch.Tensor):
        self.model, self.opts, self.config = model, opts, config
        self.autocast, self.loss_sum = autocast, loss_sum
        self.gamma = torch.zeros((), device=loss_sum.device)  # the size term's weight now

    def zero_grad(self) -> None:
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss, ce = self.loss(self.forward(x), y)
        self.backward(loss)
        self.optimize()
        self.loss_sum += ce.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (B, classes), under the step's autocast."""
        with self.autocast():
            return self.model(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to descend, the batch's mean CE)."""
        c, model = self.config, self.model
        ce = F.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing)
        loss = ce
        if c.kind == "compress":
            loss = (ce + self.gamma * model.loss_size(c.size_term)
                    + c.dead_l1 * model.dead_penalty())
        return loss, ce

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimize(self) -> None:
        """The optimizers' step and the quantizer's rules after it (``step_optimizers``)."""
        step_optimizers(self.model, self.opts)


def summarize(state: TrainState, data: D.DeviceData) -> dict:
    """The trial-level result: final metrics, history, layer rows and provenance."""
    from trainer.results import code_version, cpu_model

    model = state.model
    last = state.history[-1] if state.history else {}
    device = next(model.parameters()).device
    return {
        "kind": state.config.kind, "gamma": state.config.gamma, "seed": state.config.seed,
        "preset": state.config.preset, "width": state.config.width,
        "fixed_bits": state.config.fixed_bits, "size_term": state.config.size_term,
        "min_bits": state.config.min_bits, "init_from": state.config.init_from,
        "precision": state.config.precision,
        "full_width": state.config.full_width or state.config.width,
        "epochs": state.config.epochs, "test_accuracy": last.get("test_accuracy"),
        **size_metrics(model), "train_time_s": state.time_total_s,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "hostname": socket.gethostname(), "cpu_model": cpu_model(),
        "code_version": code_version(),
        "torch_version": str(torch.__version__), "history": state.history,
        "layers": layer_rows(model), "n_train": data.n_train,
    }


def start_words(config: TrainConfig) -> str:
    """Where the weights start, for the start line ("" from random weights)."""
    return f", starting from the trained {config.init_from}" if config.init_from else ""


def describe(config: TrainConfig, model: ResNet9, data: D.DeviceData,
             asked: str | None = None) -> str:
    """One line saying what is about to be trained (``asked``: the precision the config gave
    before it was resolved, to say why it computes in what it does; None: as resolved)."""
    dev = next(model.parameters()).device
    words = [ramp_words(config), ration_words(config)] if config.kind == "compress" else []
    ramp = "; ".join(w for w in words if w)
    ramp = f" ({ramp})" if ramp else ""
    return (f"scnn: {config.kind} ResNet-9 {'-'.join(map(str, model.widths))} "
            f"(preset {config.preset}, {model.n0:,} weights) gamma={config.gamma:g}{ramp} "
            f"seed={config.seed}{start_words(config)} on {dev} "
            f"[{torch.get_num_threads()} threads], "
            f"{data.n_train:,} train / {data.y_test.numel():,} test images, "
            f"{config.epochs} epochs of {max(data.n_train // config.batch_size, 1)} steps, "
            f"in {precision_words(config.precision, asked or config.precision, dev.type)}")


if __name__ == "__main__":  # python -m trainer.train: its command line is trainer.cli
    from trainer.cli import run

    run()
