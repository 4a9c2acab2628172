"""pyfusedbn.convert / revert: which patterns fuse (and which are left, with the reason), and that
the converted model gives the same outputs, gradients and running statistics as the original."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

import pyfusedbn
from example_models import MODELS, assert_same_state, seeded, step
from helpers import TOLERANCE
from pyfusedbn.conversion.torch_activations import activation_module, module_activation
from pyfusedbn.activations import ACTIVATIONS

TOL = TOLERANCE[torch.float32]


def fused_modules(model):
    return {name: m for name, m in model.named_modules()
            if isinstance(m, pyfusedbn.batch_norm_modules.BatchNormActBase)}


def assert_same_training(model, reference, x, steps=2):
    """Train-mode steps (running statistics move), then an eval-mode step."""
    for i in range(steps):
        assert_same_state(step(model, x, seed=i), step(reference, x, seed=i), TOL)
        model.zero_grad(), reference.zero_grad()
    model.eval(), reference.eval()
    assert_same_state(step(model, x), step(reference, x), TOL)


# Expected fusions: the fx path fuses every BatchNorm + activation and the residual adds; module
# order (the untraceable model) only neighbours in an nn.Sequential.
EXPECTED = {
    "resnet": dict(fused=10, skipped=2, graph_module=True),
    "resnet_untraceable": dict(fused=7, skipped=6, graph_module=False),
    "mlp": dict(fused=2, skipped=0, graph_module=True),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_convert_matches_original(name):
    factory, shape = MODELS[name]
    original = seeded(factory)
    converted = pyfusedbn.convert(original)
    report = converted.pyfusedbn_report
    expected = EXPECTED[name]
    counts = (len(report.fused), len(report.skipped))
    assert counts == (expected["fused"], expected["skipped"]), report
    assert isinstance(converted, fx.GraphModule) == expected["graph_module"], report
    assert type(converted) is type(original) or expected["graph_module"]
    assert len(fused_modules(converted)) == expected["fused"]
    assert set(converted.state_dict()) == set(original.state_dict())
    assert_same_training(converted, original, torch.randn(shape))


def test_resnet_report_names_each_block():
    converted = pyfusedbn.convert(seeded(MODELS["resnet"][0]))
    report = converted.pyfusedbn_report
    fused = dict(report.fused)
    assert "add(" in fused["layer1.0.bn3"] and "add(" in fused["layer1.1.bn3"]
    skipped = dict(report.skipped)
    # The downsample BatchNorm's output became the residual operand of bn3's fused call.
    assert set(skipped) == {"layer1.0.downsample.1", "layer2.0.downsample.1"}
    assert "residual" in skipped["layer1.0.downsample.1"]
    modules = dict(converted.named_modules())
    assert modules["layer1.0.bn3"].activation == "relu"
    assert modules["stem.1"].training and modules["stem.1"].momentum == 0.1


def test_untraceable_model_falls_back_to_module_order():
    converted = pyfusedbn.convert(seeded(MODELS["resnet_untraceable"][0]))
    report = converted.pyfusedbn_report
    assert "nn.Sequential" in report.method and "torch.fx could not trace" in report.method
    skipped = dict(report.skipped)
    assert "last module" in skipped["layer1.0.branch.7"]
    assert isinstance(converted.layer1[0].branch[1], pyfusedbn.BatchNormAct2d)
    assert type(converted.layer1[0].branch[2]) is nn.Identity
    assert converted.layer1[0].branch[4].activation == "silu"


def test_mlp_keeps_eps_momentum_and_mode():
    original = seeded(MODELS["mlp"][0])
    original[4].eval()
    converted = pyfusedbn.convert(original, trace=False)
    assert type(converted) is nn.Sequential and "trace=False" in converted.pyfusedbn_report.method
    first, second = converted[1], converted[4]
    assert (first.eps, first.momentum, first.training) == (1e-3, None, True)
    assert (second.momentum, second.training, second.activation) == (0.3, False, "gelu_tanh")
    assert type(converted[2]) is nn.Identity and type(converted[5]) is nn.Identity
    assert_same_training(converted, original, torch.randn(8, 6))


@pytest.mark.parametrize("trace", [True, False])
def test_inplace_shares_parameters(trace):
    original = seeded(MODELS["mlp"][0])
    converted = pyfusedbn.convert(original, inplace=True, trace=trace)
    assert (converted is original) == (not trace)
    for name, parameter in original.named_parameters():
        assert converted.get_parameter(name) is parameter
    copied = pyfusedbn.convert(original)
    assert all(copied.get_parameter(n) is not p for n, p in original.named_parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_loads_both_ways_and_revert_restores(name):
    factory, shape = MODELS[name]
    original = seeded(factory)
    original.train()
    original(torch.randn(shape))  # running statistics away from their initial values
    converted = pyfusedbn.convert(original)
    fresh = seeded(factory, seed=5)
    fresh.load_state_dict(converted.state_dict())
    converted.load_state_dict(original.state_dict())
    reverted = pyfusedbn.revert(converted)
    assert not fused_modules(reverted)
    assert len(reverted.pyfusedbn_report.fused) == len(converted.pyfusedbn_report.fused)
    assert set(reverted.state_dict()) == set(original.state_dict())
    assert_same_training(reverted, fresh, torch.randn(shape))


class BnThen(nn.Module):
    """x -> BatchNorm2d -> then (a module, or a function called on the BatchNorm output)."""

    def __init__(self, then):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)  # a bias before BatchNorm has no gradient
        self.bn = nn.BatchNorm2d(4)
        self.then = then

    def forward(self, x):
        return self.then(self.bn(self.conv(x)))


def _in_place_add(y, r):
    y += r
    return torch.relu(y)


class _ReLUSubclass(nn.ReLU):
    pass


def _hooked_relu():
    relu = nn.ReLU()
    relu.register_forward_hook(lambda module, args, out: None)
    return relu


# (id, then, expected (activation, activation_param)) for forms that fuse.
FUSING = [
    ("ReLU", nn.ReLU(), ("relu", None)),
    ("ReLU_inplace", nn.ReLU(inplace=True), ("relu", None)),
    ("F.relu_inplace", lambda z: F.relu(z, inplace=True), ("relu", None)),
    ("torch.relu_", torch.relu_, ("relu", None)),
    ("Tensor.relu", lambda z: z.relu(), ("relu", None)),
    ("ReLU6", nn.ReLU6(), ("relu6", None)),
    ("F.relu6", F.relu6, ("relu6", None)),
    ("LeakyReLU", nn.LeakyReLU(0.2), ("leaky_relu", 0.2)),
    ("F.leaky_relu_", lambda z: F.leaky_relu_(z, 0.3), ("leaky_relu", 0.3)),
    ("ELU", nn.ELU(0.5, inplace=True), ("elu", 0.5)),
    ("F.elu", lambda z: F.elu(z, alpha=2.0), ("elu", 2.0)),
    ("SiLU", nn.SiLU(), ("silu", None)),
    ("F.silu_inplace", lambda z: F.silu(z, inplace=True), ("silu", None)),
    ("GELU", nn.GELU(), ("gelu", None)),
    ("GELU_tanh", nn.GELU(approximate="tanh"), ("gelu_tanh", None)),
    ("F.gelu_tanh", lambda z: F.gelu(z, approximate="tanh"), ("gelu_tanh", None)),
    ("Sigmoid", nn.Sigmoid(), ("sigmoid", None)),
    ("Tensor.sigmoid_", lambda z: z.sigmoid_(), ("sigmoid", None)),
    ("Tanh", nn.Tanh(), ("tanh", None)),
    ("torch.tanh", torch.tanh, ("tanh", None)),
    ("Softplus", nn.Softplus(beta=2.0), ("softplus", 2.0)),
    ("F.softplus", lambda z: F.softplus(z, 0.5), ("softplus", 0.5)),
    ("Softsign", nn.Softsign(), ("softsign", None)),
    ("F.softsign", F.softsign, ("softsign", None)),
    ("Mish", nn.Mish(), ("mish", None)),
    ("F.mish", F.mish, ("mish", None)),
    ("Hardswish", nn.Hardswish(inplace=True), ("hardswish", None)),
    ("F.hardswish", F.hardswish, ("hardswish", None)),
]

# (id, then, words the reason must contain) for forms left alone.
NOT_FUSING = [
    ("Softplus_threshold", nn.Softplus(threshold=10), "threshold"),
    ("F.softplus_threshold", lambda z: F.softplus(z, threshold=5.0), "threshold"),
    ("PReLU", nn.PReLU(), "not a supported activation"),
    ("Hardtanh", nn.Hardtanh(), "not a supported activation"),
    ("Identity", nn.Identity(), "not a supported activation"),
    ("Conv", nn.Conv2d(4, 4, 1), "not a supported activation"),
    ("hooked_ReLU", _hooked_relu(), "hooks"),
    ("two_users", lambda z: F.relu(z) + z, "2 users"),
]


def _check_fx_form(then):
    original = seeded(lambda: BnThen(copy.deepcopy(then)))
    converted = pyfusedbn.convert(original)
    assert_same_training(converted, original, torch.randn(4, 3, 5, 5))
    return converted


@pytest.mark.parametrize("form_id,then,expected", FUSING, ids=[f[0] for f in FUSING])
def test_activation_forms_fuse(form_id, then, expected):
    converted = _check_fx_form(then)
    (fused,) = fused_modules(converted).values()
    assert (fused.activation, fused.activation_param) == expected, converted.pyfusedbn_report


@pytest.mark.parametrize("form_id,then,reason", NOT_FUSING, ids=[f[0] for f in NOT_FUSING])
def test_unsupported_forms_are_reported(form_id, then, reason):
    converted = _check_fx_form(then)
    assert not fused_modules(converted)
    [(name, why)] = converted.pyfusedbn_report.skipped
    assert name == "bn" and reason in why, why


class BnAdd(nn.Module):
    """x -> conv -> BatchNorm; residual = another conv of x (computed after the BatchNorm);
    combine(bn_out, residual) -> output."""

    def __init__(self, combine, mutate_input=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)  # a bias before BatchNorm has no gradient
        self.bn = nn.BatchNorm2d(4)
        self.shortcut = nn.Conv2d(3, 4, 1)
        self.combine = combine
        self.mutate_input = mutate_input

    def forward(self, x):
        h = self.conv(x)
        y = self.bn(h)
        residual = self.shortcut(x)
        if self.mutate_input:
            residual = residual + h.mul_(2)
        return self.combine(y, residual)


# (id, combine(bn_out, other), None if it fuses else words the reason must contain).
TWO_INPUTS = [
    ("add", lambda y, r: F.relu(y + r), None),
    ("radd", lambda y, r: F.silu(r + y), None),
    ("iadd", _in_place_add, None),
    ("torch.add", lambda y, r: torch.sigmoid(torch.add(y, r)), None),
    ("Tensor.add_", lambda y, r: y.add_(r).relu_(), None),
    ("other.add_", lambda y, r: F.relu(r.add_(y)), "writes into the other operand"),
    ("alpha", lambda y, r: F.relu(torch.add(y, r, alpha=2)), "alpha"),
    ("constant", lambda y, r: F.relu(y + 1.0), "not a separate tensor"),
    # BatchNorm + add with no activation after it (the linear bottleneck): fused, "identity".
    ("add_two_users", lambda y, r: (lambda s: F.relu(s) * s)(y + r), None),
    ("no_activation", lambda y, r: y + r, None),
    ("unsupported_activation", lambda y, r: F.hardtanh(y + r), None),
    ("input_mutated", lambda y, r: F.relu(y + r), "modified in place"),
    ("traced_parameter", lambda y, r: F.leaky_relu(y, r.shape[0] * 0.1), "not a constant"),
]


@pytest.mark.parametrize("form_id,combine,reason", TWO_INPUTS, ids=[f[0] for f in TWO_INPUTS])
def test_residual_forms(form_id, combine, reason):
    original = seeded(lambda: BnAdd(combine, mutate_input=form_id == "input_mutated"))
    converted = pyfusedbn.convert(original)
    report = converted.pyfusedbn_report
    if reason is None:
        assert [name for name, _ in report.fused] == ["bn"] and "add(" in report.fused[0][1]
    else:
        [(name, why)] = report.skipped
        assert reason in why, why
    x = torch.randn(4, 3, 5, 5)
    if form_id == "input_mutated":  # autograd refuses the original model's in-place write
        with torch.no_grad():
            assert torch.equal(converted.eval()(x), original.eval()(x))
        return
    assert_same_training(converted, original, x)


MODULE_FORMS = [f for f in FUSING if isinstance(f[1], nn.Module)]


@pytest.mark.parametrize("form_id,then,expected", MODULE_FORMS, ids=[f[0] for f in MODULE_FORMS])
def test_module_order_forms(form_id, then, expected):
    original = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4),
                                            copy.deepcopy(then)))
    converted = pyfusedbn.convert(original, trace=False)
    assert (converted[1].activation, converted[1].activation_param) == expected
    assert_same_training(converted, original, torch.randn(4, 3, 5, 5))


def test_module_order_matches_exact_types_only():
    converted = pyfusedbn.convert(nn.Sequential(nn.BatchNorm1d(4), _ReLUSubclass()), trace=False)
    assert not fused_modules(converted)
    assert "_ReLUSubclass is not a supported activation" in converted.pyfusedbn_report.skipped[0][1]


class DropoutByMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return F.dropout(F.relu(self.bn(x)), 0.5, self.training)


def test_forward_depending_on_training_is_not_traced():
    converted = pyfusedbn.convert(DropoutByMode())
    assert type(converted) is DropoutByMode
    assert "self.training" in converted.pyfusedbn_report.method


def test_report_and_errors():
    report = pyfusedbn.convert(seeded(MODELS["resnet"][0])).pyfusedbn_report
    text = str(report)
    assert text.startswith("pyfusedbn.convert: 10 fused, 2 left unchanged")
    assert "layer1.0.bn3" in text and "left" in text
    with pytest.raises(TypeError, match="nn.Module"):
        pyfusedbn.convert(lambda x: x)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_module_is_inverse_of_mapping(name):
    param = 0.3 if ACTIVATIONS[name].param_name else None
    module = activation_module(name, param)
    if name == "identity":
        assert type(module) is nn.Identity
    else:
        assert module_activation(module) == (name, param)


def test_revert_and_fold_handle_sync_batch_norm_act():
    """A DDP-trained model (SyncBatchNormAct) reverts to nn.SyncBatchNorm + activation and folds
    for inference (not distributed here: the layers run their local op)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model = pyfusedbn.convert_sync_batchnorm(pyfusedbn.convert(model))
    assert any(isinstance(m, pyfusedbn.SyncBatchNormAct) for m in model.modules())
    x = torch.randn(4, 3, 9, 9)
    model.train()(x)  # one step of statistics
    model.eval()
    expected = model(x)
    reverted = pyfusedbn.revert(model)
    assert any(type(m) is nn.SyncBatchNorm for m in reverted.modules())
    torch.testing.assert_close(reverted(x), expected)
    folded = pyfusedbn.fold(model)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm)) for m in folded.modules())
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)
