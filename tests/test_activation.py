"""The ``--activation`` axis: every image model built with every nonlinearity, ReLU the
default and the model of before, a sweep over it named and recorded, reports that pool by it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from landscape.models import build_model, normalized_layers, preactivation_module, weight_layers
from landscape.models.nonlinearities import NONLINEARITIES
from landscape.report.pools import setting_key
from landscape.train import SweepConfig, sweep_runs
from landscape.train.experiment import load_experiment

IMAGE_MODELS = ("vgg_a_bn", "resnet20_bn", "resnet20", "resnet18_gn", "mlp_bn", "cnn")


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_image_model_takes_every_nonlinearity_where_relu_was(name):
    torch.manual_seed(0)
    relu = build_model(name, width=0.0625)
    places = [n for n, m in relu.named_modules() if isinstance(m, nn.ReLU)]
    assert places and all(m.inplace for m in relu.modules() if isinstance(m, nn.ReLU))
    x = torch.randn(4, 3, 32, 32)
    for activation, make in NONLINEARITIES.items():
        torch.manual_seed(0)
        model = build_model(name, width=0.0625, activation=activation)
        kind = type(make())
        assert [n for n, m in model.named_modules() if type(m) is kind] == places, activation
        for key, value in relu.state_dict().items():  # no parameters, no draws of their own
            assert torch.equal(model.state_dict()[key], value), (activation, key)
        assert model(x).shape == (4, 10)
        # a conv's pre-activation is still its normalizer's output, whatever follows it
        assert normalized_layers(model) == normalized_layers(relu)
        assert [type(preactivation_module(model, w)) for w in weight_layers(model)] == \
            [type(preactivation_module(relu, w)) for w in weight_layers(relu)]


def test_the_nonlinearity_is_the_one_computed():
    """An MLP's hidden layers by hand: tanh(W2 tanh(W1 x + b1) + b2)."""
    torch.manual_seed(0)
    model = build_model("mlp", width=0.0625, activation="tanh").eval()
    x = torch.randn(3, 3, 32, 32)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    h = x.flatten(1)
    for layer in linears[:-1]:
        h = torch.tanh(layer(h))
    torch.testing.assert_close(model(x), linears[-1](h))


def test_a_sweep_over_activations_names_its_runs_and_one_value_does_not():
    config = SweepConfig(models=("mlp", "cnn_bn"), lrs=(0.1,), activation=("relu", "gelu"),
                         dataset="cifar10-mini", device="cpu")
    config.validate()
    assert config.run_count() == 4 and config.varying_axes() == ("activation",)
    assert [r.name for r in sweep_runs(config)] == [
        "mlp-lr0.1-seed0-relu", "cnn_bn-lr0.1-seed0-relu", "mlp-lr0.1-seed0-gelu",
        "cnn_bn-lr0.1-seed0-gelu"]
    one = SweepConfig(models=("mlp",), lrs=(0.1,), activation="gelu", dataset="cifar10-mini")
    assert [r.name for r in sweep_runs(one)] == ["mlp-lr0.1-seed0"]
    assert sweep_runs(one)[0].cell.activation == "gelu"


def test_an_experiment_file_sweeps_activations_and_refuses_a_wrong_type(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[run]\nmodels = ["mlp"]\nactivation = ["relu", "silu"]\n')
    assert load_experiment(good)["activation"] in (("relu", "silu"), ["relu", "silu"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nactivation = 3\n')
    with pytest.raises(Exception) as raised:
        load_experiment(bad)
    assert "activation" in str(raised.value) and "\n" not in str(raised.value)


def test_runs_of_other_activations_do_not_pool_and_older_files_mean_relu():
    def run(**attrs):
        return SimpleNamespace(attrs={"model": "mlp", "lr": 0.1, "seed": 0, **attrs})

    assert setting_key(run(activation="gelu")) != setting_key(run(activation="relu"))
    assert setting_key(run()) == setting_key(run(activation="relu"))  # written before the axis
