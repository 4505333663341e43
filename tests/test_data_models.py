"""Data on the device and the VGG-A builders."""

import numpy as np
import pytest
import torch
from torch import nn

from landscape.data import BatchStream, augment, load_cifar10, load_cifar10_mini
from landscape.errors import LandscapeError
from landscape.models import MODELS, build_model


@pytest.fixture(scope="module")
def mini():
    return load_cifar10_mini()


def test_mini_is_the_documented_real_subset(mini):
    assert mini.x_train.shape == (5085, 3, 32, 32) and mini.x_train.dtype == torch.uint8
    assert mini.x_test.shape == (1017, 3, 32, 32) and mini.y_test.dtype == torch.int64
    assert set(mini.y_train.tolist()) == set(range(10))
    # Channel statistics quoted in the data's README.
    np.testing.assert_allclose(mini.mean.numpy(), [0.4936, 0.4846, 0.4483], atol=2e-4)
    np.testing.assert_allclose(mini.std.numpy(), [0.2481, 0.2446, 0.2621], atol=2e-4)


def test_missing_cifar10_is_one_clear_error(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(LandscapeError) as err:
        load_cifar10(root, download=False)
    message = str(err.value)
    assert str(root) in message and "--dataset cifar10-mini" in message and "\n" not in message


def test_batch_stream_is_seeded_and_normalized(mini):
    a = BatchStream(mini, 128, seed=5)
    b = BatchStream(mini, 128, seed=5)
    c = BatchStream(mini, 128, seed=6)
    assert a.steps_per_epoch == 5085 // 128
    for (xa, ya), (xb, yb), (xc, yc) in zip(a.epoch(), b.epoch(), c.epoch()):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(ya, yc)
        assert xa.shape == (128, 3, 32, 32) and xa.dtype == torch.float32
    whole = mini.normalize(mini.x_train)
    assert whole.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (whole.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_augment_is_a_padded_crop_with_optional_flip():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=gen)
    out = augment(images, torch.Generator().manual_seed(1), pad=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for i in range(len(images)):
        candidates = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[i], c) for c in candidates)
        flipped = any(torch.equal(out[i], c.flip(-1)) for c in candidates)
        assert plain or flipped
        flips += flipped and not plain
    assert 16 < flips < 48  # about half the images are flipped


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_vgg_a_architecture():
    model = build_model("vgg_a")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 512), (512, 512), (512, 10)]
    assert count(model, nn.MaxPool2d) == 5 and count(model, nn.BatchNorm2d) == 0
    bn = build_model("vgg_a_bn")
    assert count(bn, nn.BatchNorm2d) == 8 and count(bn, nn.BatchNorm1d) == 2
    assert build_model("vgg_a_bn", width=0.25)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert [c.out_channels for c in build_model("vgg_a", width=0.25).modules()
            if isinstance(c, nn.Conv2d)] == [16, 32, 64, 64, 128, 128, 128, 128]


def test_glorot_init_and_shared_initial_weights():
    torch.manual_seed(0)
    plain = build_model("vgg_a", width=0.5)
    torch.manual_seed(0)
    with_bn = build_model("vgg_a_bn", width=0.5)
    weights = lambda m: [p for n, p in m.named_parameters()  # noqa: E731
                         if p.ndim > 1]
    for a, b in zip(weights(plain), weights(with_bn)):
        assert torch.equal(a, b)  # BN changes nothing about the conv/linear initialization
    conv = next(m for m in plain.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 3)
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    assert float(conv.weight.detach().var()) == pytest.approx(2 / (fan_in + fan_out), rel=0.1)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in plain.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_model_registry_names():
    assert {"vgg_a", "vgg_a_bn"} <= set(MODELS)
    with pytest.raises(LandscapeError, match="unknown model 'vgg_z'"):
        build_model("vgg_z")
