"""The CUDA-graph step's parts that a CPU can check: its SGD with a tensor learning rate is
torch's, the training step reads nothing back to the host but Adam's step counts (on a
GPU, capturable), and a captured trial trains as the eager one (GPU only, else skipped).
The eager step of the trainer's default, and taking its batches, read nothing back at all."""

import copy
from contextlib import nullcontext

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.config import ConfigError, TrainConfig, resolve
from trainer.graphs import sgd_step
from trainer.network import model_for
from trainer.train import Step, autocast_for, make_optimizers, set_lr, train


def test_sgd_step_with_a_tensor_learning_rate_is_torchs_nesterov_sgd():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in ((8, 3, 3, 3), (8,), (10, 8))]
    mine = [torch.nn.Parameter(p.detach().clone()) for p in params]
    kw = dict(momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=True)
    ref = torch.optim.SGD([{"params": params}], lr=0.4, **kw)
    opt = torch.optim.SGD([{"params": mine, "lr": torch.tensor(0.4)}], lr=0.4, **kw)
    for step in range(4):  # the first step creates the momentum buffers
        lr = 0.4 * (1 - step / 4)
        ref.param_groups[0]["lr"] = lr
        opt.param_groups[0]["lr"].fill_(lr)
        for p, q in zip(params, mine, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ref.step()
        sgd_step(opt)
        for p, q in zip(params, mine, strict=True):
            torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(opt.state[q]["momentum_buffer"],
                                       ref.state[p]["momentum_buffer"])


class HostReads(TorchDispatchMode):
    """Records every tensor whose value an operation reads back to the host."""

    READS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal")

    def __init__(self):
        super().__init__()
        self.read: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.READS):
            self.read.append(args[0])
        return func(*args, **(kwargs or {}))


def test_the_training_step_reads_nothing_back_but_adams_step_counts():
    config = resolve(TrainConfig(preset="smoke", width=0.25, gamma=0.5, cuda_graphs=True),
                     has_gpu=False)
    torch.manual_seed(0)
    model = model_for(config).to(memory_format=torch.channels_last)
    opts = make_optimizers(model, config)
    assert all(torch.is_tensor(g["lr"]) for o in opts for g in o.param_groups)
    adam = opts[1]
    for group in adam.param_groups:  # torch's capturable Adam runs on a GPU only: on this
        group["capturable"] = False  # CPU its step counts are read, which the check allows
        group["lr"] = float(group["lr"])
    loss_sum = torch.zeros(())
    step = Step(model, opts, config, nullcontext, loss_sum)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    step.gamma.fill_(0.5)
    step.zero_grad()
    step(x, y)  # creates the optimizer state
    counts = {id(s["step"]) for s in adam.state.values()}
    set_lr(opts, config, 0.5)
    before = [p.detach().clone() for p in model.parameters()]
    reads = HostReads()
    with reads:
        step.zero_grad()
        step(x, y)
    assert len(counts) == len(adam.state) > 0
    assert [t for t in reads.read if id(t) not in counts] == []
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert float(loss_sum) > 0


def test_the_eager_training_step_and_its_batches_read_nothing_back_to_the_host():
    # A read-back waits for the GPU: none in a step of the trainer's default (eager, fused
    # optimizers, one-pass quantizer) nor in taking the next batch
    from trainer import data as D

    config = resolve(TrainConfig(preset="smoke", width=0.25, gamma=0.5), has_gpu=False)
    torch.manual_seed(0)
    model = model_for(config).to(memory_format=torch.channels_last)
    opts = make_optimizers(model, config)
    data = D.to_device(D.make_synthetic(256), torch.device("cpu"))
    batches = D.train_batches(data, 16, torch.Generator().manual_seed(0), 8, channels_last=True)
    step = Step(model, opts, config, nullcontext, torch.zeros(()))
    step.gamma.fill_(0.5)
    step.zero_grad()
    step(*next(batches))  # creates the optimizer state and the one-pass plan
    reads = HostReads()
    with reads:
        for _ in range(2):
            x, y = next(batches)
            step.zero_grad()
            step(x, y)
    assert reads.read == []
    assert all(torch.is_tensor(s["step"]) for s in opts[1].state.values())  # fused: counted
    # on the parameters' device, not read back


def test_cuda_graphs_without_a_gpu_is_refused():
    config = TrainConfig(preset="smoke", dataset="synthetic", epochs=1, device="cpu",
                         cuda_graphs=True)
    with pytest.raises(ConfigError, match="cuda_graphs needs a CUDA device"):
        train(config, verbose=False)


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@GPU
def test_captured_steps_compute_what_eager_steps_compute():
    from trainer.graphs import GraphedStep

    config = resolve(TrainConfig(preset="smoke", gamma=0.5, cuda_graphs=True), has_gpu=True)
    torch.manual_seed(0)
    base = model_for(config).cuda().to(memory_format=torch.channels_last)
    autocast = autocast_for("cuda", config.precision, graphs=True)
    runs = []
    for _ in range(2):
        model = copy.deepcopy(base)
        opts = make_optimizers(model, config)
        runs.append((model, opts, Step(model, opts, config, autocast,
                                       torch.zeros((), device="cuda"))))
    graphed = GraphedStep(runs[0][2], runs[0][2].zero_grad)
    torch.manual_seed(1)
    for i in range(8):
        x = torch.randn(64, 3, 32, 32, device="cuda").contiguous(
            memory_format=torch.channels_last)
        y = torch.randint(0, 10, (64,), device="cuda")
        for _, opts, step in runs:
            set_lr(opts, config, 1 - i / 8)
            step.gamma.fill_(0.5)
        if i == 4:
            graphed.invalidate()  # as after a cut: eager again, then captured again
        graphed(x, y)
        runs[1][2].zero_grad()
        runs[1][2](x, y)
    assert graphed.captures == 2
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(runs[0][2].loss_sum, runs[1][2].loss_sum)


@GPU
def test_a_captured_trial_compresses_as_the_eager_one():
    config = TrainConfig(preset="smoke", dataset="synthetic", gamma=2.0, epochs=3,
                         batch_size=128, width=0.25, lr_quant=0.2, init_bits=2.0,
                         cut_every=5, min_bits=0.0, device="cuda")
    eager = train(config, verbose=False)
    graphed = train(config.replace(cuda_graphs=True), verbose=False)
    assert graphed["weights_kept_fraction"] < 1  # it cut channels, re-capturing after each cut
    for key in ("test_accuracy", "weights_kept_fraction"):
        assert graphed[key] == pytest.approx(eager[key], abs=0.05), key
