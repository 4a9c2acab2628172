"""Bad input: a clear ValueError/TypeError/RuntimeError naming the argument, never a crash."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import pyfusedbn
from pyfusedbn._ops import ops

C = 4


def bn(x, **kwargs):
    args = dict(running_mean=torch.zeros(C), running_var=torch.ones(C), weight=torch.ones(C),
                bias=torch.zeros(C), training=True)
    args.update(kwargs)
    return pyfusedbn.batch_norm_act(x, **args)


X = torch.randn(3, C, 5, 5)

CASES = [
    # (description, call, exception type, words the message must contain)
    ("rank 1 input", lambda: bn(torch.randn(C)), ValueError, ["rank 2 to 5", "rank 1"]),
    ("rank 6 input", lambda: bn(torch.randn(2, C, 2, 2, 2, 2)), ValueError, ["rank 2 to 5"]),
    ("weight channels", lambda: bn(X, weight=torch.ones(C + 1)), ValueError, ["weight", "4 values"]),
    ("bias channels", lambda: bn(X, bias=torch.ones(C - 1)), ValueError, ["bias", "one value per channel"]),
    ("running_mean channels", lambda: bn(X, running_mean=torch.zeros(2)), ValueError, ["running_mean"]),
    ("running_var channels", lambda: bn(X, training=False, running_var=torch.ones(2, 2)), ValueError,
     ["running_var"]),
    ("residual shape", lambda: bn(X, residual=torch.randn(3, C, 5, 4)), ValueError, ["residual", "shape"]),
    ("residual dtype", lambda: bn(X, residual=torch.randn(3, C, 5, 5, dtype=torch.float64)), TypeError,
     ["residual", "dtype"]),
    ("integer input", lambda: bn(torch.ones(3, C, 2, 2, dtype=torch.int64)), TypeError, ["input", "Long"]),
    ("complex input", lambda: bn(torch.ones(3, C, 2, 2, dtype=torch.complex64)), TypeError, ["input"]),
    ("integer weight", lambda: bn(X, weight=torch.ones(C, dtype=torch.int32)), TypeError, ["weight"]),
    ("device mismatch", lambda: bn(X, weight=torch.ones(C, device="meta")), RuntimeError,
     ["weight", "device"]),
    ("nan eps", lambda: bn(X, eps=math.nan), ValueError, ["eps"]),
    ("inf eps", lambda: bn(X, eps=math.inf), ValueError, ["eps"]),
    ("negative momentum", lambda: bn(X, momentum=-0.1), ValueError, ["momentum"]),
    ("one value per channel", lambda: bn(torch.randn(1, C, 1, 1)), ValueError,
     ["Expected more than 1 value per channel when training"]),
    ("one value per channel 2d", lambda: bn(torch.randn(1, C)), ValueError, ["more than 1 value"]),
    ("eval without stats", lambda: bn(X, training=False, running_mean=None, running_var=None),
     RuntimeError, ["running_mean", "evaluation mode"]),
    ("unknown activation", lambda: bn(X, activation="swish"), ValueError, ["swish", "relu", "hardswish"]),
    ("param for param-free activation", lambda: bn(X, activation="relu", activation_param=0.5), ValueError,
     ["relu", "activation_param"]),
    ("non-finite activation param", lambda: bn(X, activation="elu", activation_param=math.inf), ValueError,
     ["activation_param", "alpha"]),
    ("input not a tensor", lambda: bn([1.0, 2.0]), TypeError, ["input"]),
    ("op: unknown activation", lambda: ops.batch_norm_act_apply(X, torch.zeros(C), torch.ones(C), None, None,
                                                                None, "nope", 0.0), ValueError, ["nope"]),
    ("op: from_output with relu", lambda: ops.batch_norm_act_backward_reduce(
        X, X, torch.zeros(C), torch.ones(C), None, None, None, "relu", 0.0, True), ValueError,
     ["from_output", "invertible", "relu"]),
    ("op: from_output with zero slope", lambda: ops.batch_norm_act_backward_elemt(
        X, X, torch.zeros(C), torch.ones(C), None, None, None, None, None, "leaky_relu", 0.0, True),
     ValueError, ["negative_slope > 0"]),
    ("op: grad_out shape", lambda: ops.batch_norm_act_backward_elemt(
        X[:2], X, torch.zeros(C), torch.ones(C), None, None, None, None, None, "relu", 0.0), ValueError,
     ["grad_out", "shape"]),
    # Issue 12: a module given an input with another channel count (this crashed one build).
    ("module channel mismatch", lambda: pyfusedbn.BatchNormAct2d(C)(torch.randn(2, C + 1, 3, 3)),
     ValueError, ["weight", "5 values", "[2, 5, 3, 3]", "[4]"]),
    ("module channel mismatch, eval", lambda: pyfusedbn.BatchNormAct2d(C).eval()(torch.randn(2, C + 1, 3, 3)),
     ValueError, ["running_mean", "5 values"]),
    ("module channel mismatch, no affine", lambda: pyfusedbn.BatchNormAct1d(C, affine=False)(
        torch.randn(6, C - 1)), ValueError, ["running_mean", "3 values"]),
    ("op: only one running stat", lambda: ops.batch_norm_act_train(
        X, None, None, None, torch.zeros(C), None, 0.1, 1e-5, "relu", 0.0), ValueError,
     ["running_mean and running_var"]),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), f"message lacks {word!r}: {info.value}"


@pytest.mark.parametrize("module,shape,words", [
    (pyfusedbn.BatchNormAct1d, (2, C, 2, 2), "expected 2D or 3D input (got 4D input)"),
    (pyfusedbn.BatchNormAct2d, (2, C, 2), "expected 4D input (got 3D input)"),
    (pyfusedbn.BatchNormAct3d, (2, C, 2, 2), "expected 5D input (got 4D input)"),
])
def test_module_rank_errors_match_torch(module, shape, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        module(C)(torch.randn(shape))


def test_module_rejects_unknown_activation_at_construction():
    with pytest.raises(ValueError, match="activation must be one of"):
        pyfusedbn.BatchNormAct2d(C, activation="ReLU")


def test_channel_mismatch_does_not_crash_the_process():
    """The issue-12 reproduction in a fresh interpreter: a crash (SIGSEGV) there fails this test
    with its faulthandler trace instead of killing the test run."""
    script = textwrap.dedent("""
        import faulthandler, torch, pyfusedbn
        faulthandler.enable()
        for module in (pyfusedbn.BatchNormAct2d(4), pyfusedbn.BatchNormAct2d(4).eval()):
            try:
                module(torch.randn(2, 5, 3, 3))
            except ValueError as e:
                print("ValueError:", str(e).splitlines()[0])
            else:
                raise SystemExit("no error")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit status {result.returncode}:\n{result.stdout}{result.stderr}"
    assert result.stdout.count("ValueError:") == 2, result.stdout
