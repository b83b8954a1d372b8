"""Training batches: the epoch's random draws moved to the device at once give the batches
that drawing and copying batch by batch gave, image for image."""

import pytest
import torch

from trainer import data as D


def batches_one_by_one(data: D.DeviceData, batch_size: int, gen: torch.Generator,
                       cutout: int):
    """``train_batches`` as it was before 2026-11-26 evening: each batch's draws copied to
    the device on their own (a copy that waits for the GPU, four per batch)."""
    n = data.n_train
    perm = torch.randperm(n, generator=gen)
    for i in range(max(n // batch_size, 1)):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        b = idx.numel()
        r = torch.randint(0, 2 * D.PAD + 1, (2, b), generator=gen)
        flip = torch.rand(b, generator=gen) < 0.5
        centre = torch.randint(0, 32, (2, b), generator=gen)
        x = D._crop(data.train_padded[idx], r[0], r[1])
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = D.normalize(x, data)
        if cutout:
            x = D._cutout(x, centre[0], centre[1], cutout)
        yield x, data.y_train[idx]


@pytest.mark.parametrize("n,batch_size,cutout", [(300, 64, 8), (300, 100, 0), (50, 64, 8)])
def test_an_epochs_batches_are_those_drawn_batch_by_batch(n, batch_size, cutout):
    data = D.to_device(D.make_synthetic(n, seed=1), torch.device("cpu"))
    gens = [torch.Generator().manual_seed(7) for _ in range(2)]
    for _ in range(2):  # the generator goes on from where the last epoch left it
        new = list(D.train_batches(data, batch_size, gens[0], cutout, channels_last=True))
        old = list(batches_one_by_one(data, batch_size, gens[1], cutout))
        assert len(new) == len(old) == max(n // batch_size, 1)
        for (x, y), (x_ref, y_ref) in zip(new, old, strict=True):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
            assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(gens[0].get_state(), gens[1].get_state())
