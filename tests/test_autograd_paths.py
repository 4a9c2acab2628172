"""Eager's C++ autograd and the Python autograd.Functions that torch.compile and torch.export trace
are one definition (what to save: the op batch_norm_act_saves; how to differentiate: the ops
*_layer_backward): on the same inputs they save the same tensors and give bitwise equal
gradients, for every activation, with and without a residual, for BatchNorm (train and eval) and
the GroupNorm op (which InstanceNorm and LayerNorm2d run on)."""
import pytest
import torch

from pyfusedbn._ops import ops
from pyfusedbn.activations import ACTIVATION_NAMES, resolve_activation
from pyfusedbn.batch_norm_autograd import BatchNormActFunction
from pyfusedbn.group_norm_autograd import GroupNormActFunction

SHAPE, GROUPS = (4, 6, 5, 5), 3
# Every activation at torch's default parameter, and leaky_relu with a negative slope (its
# derivative cannot be read off the output, so the residual is saved instead).
ACTIVATION_CASES = [resolve_activation(name) for name in ACTIVATION_NAMES] + [("leaky_relu", -0.2)]
NORMS = ["batch_norm_train", "batch_norm_eval", "group_norm"]


def make_inputs(residual, seed):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    tensors = {"input": rand(*SHAPE), "weight": rand(SHAPE[1]).abs() + 0.5, "bias": rand(SHAPE[1]),
               "residual": rand(*SHAPE) if residual else None}
    return {k: None if t is None else t.requires_grad_() for k, t in tensors.items()}


def run(norm, path, tensors, activation, param):
    """The layer's output by one path ("eager": the registered op with its C++ autograd;
    "python": the autograd.Function), with its running statistics (BatchNorm) fresh per call."""
    x, w, b, r = (tensors[k] for k in ("input", "weight", "bias", "residual"))
    if norm == "group_norm":
        if path == "eager":
            return ops.group_norm_act_layer(x, w, b, r, GROUPS, 1e-5, activation, param)[0]
        return GroupNormActFunction.apply(x, w, b, r, GROUPS, 1e-5, activation, param)[0]
    training = norm == "batch_norm_train"
    running_mean, running_var = torch.full((SHAPE[1],), 0.1), torch.full((SHAPE[1],), 1.5)
    args = (x, w, b, r, running_mean, running_var, training, 0.1, 1e-5, activation, param)
    return ops.batch_norm_act(*args) if path == "eager" else BatchNormActFunction.apply(*args)


def saved_and_grads(norm, path, activation, param, residual):
    """(what autograd saved, each as the argument or output it is or else its value; the
    gradients of input, weight, bias, residual)."""
    tensors = make_inputs(residual, seed=0)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = run(norm, path, tensors, activation, param)
    named = dict(tensors, output=out)

    def which(t):
        for name, value in named.items():
            if value is not None and t.data_ptr() == value.data_ptr() and t.shape == value.shape:
                return name
        return (t.shape, t.dtype, t.detach().clone())

    saved = [which(t) for t in saved]
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    wanted = [t for t in tensors.values() if t is not None]
    return saved, torch.autograd.grad(out, wanted, grad_out)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation,param", ACTIVATION_CASES,
                         ids=[f"{a}{'' if p in (0.0, None) else p}" for a, p in ACTIVATION_CASES])
@pytest.mark.parametrize("norm", NORMS)
def test_eager_and_python_autograd_agree(norm, activation, param, residual):
    eager_saved, eager_grads = saved_and_grads(norm, "eager", activation, param, residual)
    python_saved, python_grads = saved_and_grads(norm, "python", activation, param, residual)
    assert len(eager_saved) == len(python_saved), (eager_saved, python_saved)
    for i, (e, p) in enumerate(zip(eager_saved, python_saved)):
        if isinstance(e, str) or isinstance(p, str):
            assert e == p, f"saved tensor {i}: eager saves {e}, the Python autograd {p}"
        else:
            assert e[:2] == p[:2] and torch.equal(e[2], p[2]), f"saved tensor {i} differs"
    for i, (e, p) in enumerate(zip(eager_grads, python_grads)):
        assert torch.equal(e, p), f"gradient {i}: max difference {(e - p).abs().max()}"


@pytest.mark.parametrize("activation,param", [("relu", 0.0), ("silu", 0.0)])
@pytest.mark.parametrize("norm", NORMS)
def test_double_backward_agrees(norm, activation, param):
    """create_graph=True: both paths differentiate the same composite."""
    results = []
    for path in ("eager", "python"):
        tensors = make_inputs(residual=True, seed=2)
        out = run(norm, path, tensors, activation, param)
        grads = torch.autograd.grad(out.square().sum(), tensors["input"], create_graph=True)[0]
        wanted = [t for t in tensors.values() if t is not None]
        results.append(torch.autograd.grad(grads.sum(), wanted))
    for e, p in zip(*results):
        assert torch.equal(e, p), f"max difference {(e - p).abs().max()}"


def test_batch_norm_saves_rule():
    """What batch_norm_act's autograd keeps beside its input and statistics, per activation."""
    assert tuple(ops.batch_norm_act_saves(False, "relu", 0.0)) == (False, False)
    assert tuple(ops.batch_norm_act_saves(True, "relu", 0.0)) == (False, True)
    assert tuple(ops.batch_norm_act_saves(True, "identity", 0.0)) == (False, False)
    assert tuple(ops.batch_norm_act_saves(True, "leaky_relu", -0.2)) == (True, False)
    assert tuple(ops.batch_norm_act_saves(True, "silu", 0.0)) == (True, False)
