"""The training step captured in a CUDA graph (``TrainConfig.cuda_graphs``, a GPU only).

On a GPU a compress step waits on the host: about 410 small operations (850 before the
one-pass quantizer, trainer/flat.py, and the fused optimizers), each dispatched by Python
and autograd, take twice the float step's host time (``benchmarks.host``;
docs/benchmarks-history.md), while the GPU's own work is about the float step's. A CUDA
graph records the step's kernels once and replays them with one launch, so the host's
share goes.

A graph replays fixed kernels on fixed memory, so the step holds everything that changes
from step to step in tensors it reads (the batch, the learning rates, gamma) and reads
nothing back to the host. A cut replaces parameters and optimizer state, so after a cut
the next step runs eagerly (which also warms up cuDNN for the new shapes) and the one
after is captured again. Every step is a real training step: none is repeated or skipped.

The weights' SGD runs as multi-tensor operations with a tensor learning rate
(``sgd_step``: torch's foreach SGD turns a tensor learning rate into a host read); the bit
depths' and exponents' Adam is torch's own with ``capturable=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


@torch.no_grad()
def sgd_step(opt: torch.optim.SGD) -> None:
    """``opt.step()`` for Nesterov SGD with weight decay, whose group learning rates are
    0-d tensors, in multi-tensor operations that read nothing back to the host.

    The same update as torch's foreach SGD (tests/test_graphs.py): g' = g + wd * p,
    buf = momentum * buf + g' (buf = g' at the first step), p -= lr * (g' + momentum * buf).
    """
    for group in opt.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        momentum, lr = group["momentum"], group["lr"]
        grads = torch._foreach_add([p.grad for p in params], params,
                                   alpha=group["weight_decay"])
        states = [opt.state[p] for p in params]
        old = [(st["momentum_buffer"], g) for st, g in zip(states, grads, strict=True)
               if st.get("momentum_buffer") is not None]
        for st, g in zip(states, grads, strict=True):
            if st.get("momentum_buffer") is None:  # the first step (never inside a graph)
                st["momentum_buffer"] = g.clone()
        if old:
            bufs, olds = [b for b, _ in old], [g for _, g in old]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, olds)
        torch._foreach_add_(grads, [st["momentum_buffer"] for st in states], alpha=momentum)
        torch._foreach_mul_(grads, lr)
        torch._foreach_sub_(params, grads)


class GraphedStep:
    """Runs ``body()`` (forward, loss, backward, optimizer steps: reading only ``self.x``,
    ``self.y`` and tensors it owns) eagerly once, then as a captured CUDA graph until
    ``invalidate()`` (after a cut). ``zero_grad`` empties the gradients before an eager
    step and before a capture (the captured backward then writes them afresh each replay).
    """

    def __init__(self, body: Callable[[Tensor, Tensor], None], zero_grad: Callable[[], None]):
        self.body, self.zero_grad = body, zero_grad
        self.x: Tensor | None = None  # the batch the graph reads (B, 3, 32, 32)
        self.y: Tensor | None = None  # (B,)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = False  # an eager step has run since the last invalidate()
        self.captures = 0  # graphs captured so far (one per layout)

    def invalidate(self) -> None:
        """The parameters changed shape (a cut): the next step runs eagerly, then captures."""
        self.graph, self.warm = None, False

    def __call__(self, x: Tensor, y: Tensor) -> None:
        if self.x is None or self.x.shape != x.shape or self.y.shape != y.shape:
            self.x = torch.empty_like(x)  # keeps x's memory format (channels_last)
            self.y = torch.empty_like(y)
            self.invalidate()
        self.x.copy_(x)
        self.y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
        elif not self.warm:
            side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graphs asks
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.zero_grad()
                self.body(self.x, self.y)
            torch.cuda.current_stream().wait_stream(side)
            self.warm = True
        else:
            self.zero_grad()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.body(self.x, self.y)
            graph.replay()  # capturing records the step without running it
            self.graph = graph
            self.captures += 1
