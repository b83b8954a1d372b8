"""benchmarks.tta: test-time augmentation measures the network the trainer tested."""

import torch

from benchmarks.tta import tta_accuracy, view_logits
from trainer import data
from trainer.config import TrainConfig, resolve
from trainer.model import build_model
from trainer.train import train


def test_its_plain_view_is_the_trainers_final_test():
    config = TrainConfig(preset="smoke", dataset="synthetic", kind="compress", gamma=0.5,
                         epochs=2, synthetic_size=1024)
    final = {}
    result = train(config, on_epoch=lambda m, s: final.update(model=s.model), verbose=False)
    acc = tta_accuracy(final["model"], *data.test_set(resolve(config, has_gpu=False), None))
    assert acc["plain"] == result["test_accuracy"]
    assert final["model"].training  # left in the mode it was found in
    assert all(0.0 <= a <= 1.0 for a in acc.values())


def test_the_views_are_the_image_its_mirror_and_its_shifts():
    torch.manual_seed(0)
    model = build_model((4, 8, 8, 8), quantized=True, init_bits=8.0).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        # a mirror-symmetric image looks the same flipped: flip adds nothing
        sym = torch.cat([x[..., :16], x[..., :16].flip(3)], dim=3)
        views = view_logits(model, sym)
        torch.testing.assert_close(views["flip"], views["plain"])
        # a constant image looks the same shifted (reflect padding) and flipped
        const = torch.ones(2, 3, 32, 32) * torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
        views = view_logits(model, const)
        torch.testing.assert_close(views["flip_translate"], views["plain"])
        # an ordinary image does not: the views are really different inputs
        views = view_logits(model, x)
        assert not torch.allclose(views["flip"], views["plain"])
        assert not torch.allclose(views["flip_translate"], views["flip"])
