"""The GroupNorm ops themselves: opcheck (schema, fake kernels, autograd), gradcheck and
gradgradcheck in float64, bad input (torch's error types, clear messages), proof that the
compiled kernels ran, torch.compile(fullgraph=True)."""
import pytest
import torch
import torch._dynamo
from torch.autograd import gradcheck, gradgradcheck

import pyfusedbn
from pyfusedbn._ops import ops
from pyfusedbn.group_norm import GROUP_KERNEL_OPS, GROUP_OP_NAMES
from group_norm_cases import make_inputs
from helpers import TOLERANCE, assert_close

ACT = ("silu", 0.0)


def op_args(name, dtype, memory_format, residual, generator):
    x, w, b, res, dy = make_inputs((3, 6, 4, 2), dtype, memory_format, generator, residual=residual)
    if name in ("group_norm_act", "group_norm_act_layer"):
        return (x, w, b, res, 3, 1e-5) + ACT
    _, mean, rstd = ops.group_norm_act(x, w, b, res, 3, 1e-5, *ACT)
    return (dy, x, mean, rstd, w, b, res, 3) + ACT


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("name", GROUP_OP_NAMES)
def test_opcheck(name, residual, dtype, memory_format, generator):
    torch.library.opcheck(getattr(ops, name).default, op_args(name, dtype, memory_format, residual, generator))


@pytest.mark.parametrize("activation", pyfusedbn.ACTIVATION_NAMES)
def test_gradcheck(activation, generator):
    x, w, b, res, _ = make_inputs((2, 6, 3, 2), torch.float64, torch.channels_last, generator)
    args = [t.requires_grad_() for t in (x, w, b, res)]
    fn = lambda x, w, b, r: pyfusedbn.group_norm_act(x, 3, w, b, activation=activation, residual=r)
    assert gradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("activation", ["identity", "silu", "gelu", "tanh", "softplus"])
def test_gradgradcheck(activation, generator):
    x, w, b, res, _ = make_inputs((2, 4, 3, 2), torch.float64, torch.contiguous_format, generator)
    args = [t.requires_grad_() for t in (x, w, b, res)]
    fn = lambda x, w, b, r: pyfusedbn.group_norm_act(x, 2, w, b, activation=activation, residual=r)
    assert gradgradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_instance_and_layer_norm(generator):
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, generator=generator).add(0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, generator=generator, requires_grad=True)
    assert gradcheck(lambda x, w, b: pyfusedbn.instance_norm_act(x, weight=w, bias=b, activation="elu"),
                     (x, w, b), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert gradcheck(lambda x, w, b: pyfusedbn.layer_norm_act_2d(x, w, b, activation="mish"),
                     (x, w, b), eps=1e-6, atol=1e-5, rtol=1e-4)


BAD_INPUTS = [
    # (description, call, error type, message pattern)
    ("channels not divisible by groups", lambda: pyfusedbn.group_norm_act(torch.randn(2, 6, 3), 4),
     RuntimeError, r"divisible by num_groups.*\[2, 6, 3\] and num_groups=4"),
    ("zero groups", lambda: pyfusedbn.group_norm_act(torch.randn(2, 6, 3), 0), ValueError,
     "num_groups must be positive, got 0"),
    ("rank 1", lambda: pyfusedbn.group_norm_act(torch.randn(6), 2), ValueError, "rank 2 to 5"),
    ("rank 6", lambda: pyfusedbn.group_norm_act(torch.randn(1, 2, 1, 1, 1, 2), 2), ValueError, "rank 2 to 5"),
    ("integer input", lambda: pyfusedbn.group_norm_act(torch.ones(2, 4, 3, dtype=torch.int64), 2),
     TypeError, "float32, float64, float16 or bfloat16"),
    ("weight length", lambda: pyfusedbn.group_norm_act(torch.randn(2, 4, 3), 2, torch.ones(3)),
     ValueError, r"weight must be a 1-D tensor with one value per channel \(4 values"),
    ("bias on meta", lambda: pyfusedbn.group_norm_act(torch.randn(2, 4, 3), 2, None, torch.ones(4, device="meta")),
     RuntimeError, "bias is on meta but input is on cpu"),
    ("residual shape", lambda: pyfusedbn.group_norm_act(torch.randn(2, 4, 3), 2, residual=torch.randn(2, 4, 2)),
     ValueError, "residual must have the input's shape"),
    ("residual dtype", lambda: pyfusedbn.group_norm_act(torch.randn(2, 4, 3), 2,
                                                        residual=torch.randn(2, 4, 3, dtype=torch.float64)),
     TypeError, "residual must have the input's dtype"),
    ("negative eps", lambda: pyfusedbn.group_norm_act(torch.randn(2, 4, 3), 2, eps=-1.0), ValueError,
     "eps must be a finite value >= 0"),
    ("unknown activation", lambda: pyfusedbn.group_norm_act(torch.randn(2, 4, 3), 2, activation="swish"),
     ValueError, "activation must be one of"),
    # F.group_norm's check, its words: one sample whose groups are one value each.
    ("one value per group", lambda: pyfusedbn.group_norm_act(torch.randn(1, 4), 4), ValueError,
     r"Expected more than 1 value per channel when training, got input size \[1, 4\]"),
    ("one value per group (module)", lambda: pyfusedbn.GroupNormAct(3, 3)(torch.randn(1, 3, 1, 1)), ValueError,
     r"Expected more than 1 value per channel when training, got input size \[1, 3, 1, 1\]"),
    ("float groups", lambda: pyfusedbn.group_norm_act(torch.randn(2, 4, 3), 2.0), TypeError,
     "num_groups must be an int"),
    ("backward mean shape", lambda: ops.group_norm_act_backward(
        torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.zeros(2, 4), torch.ones(2, 2), None, None, None, 2,
        "relu", 0.0), ValueError, r"mean must have shape \(2, 2\)"),
    ("instance norm without running stats in eval", lambda: pyfusedbn.instance_norm_act(
        torch.randn(2, 4, 3), use_input_stats=False), ValueError, "running_mean and running_var must be defined"),
]


@pytest.mark.parametrize("call,error,pattern", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_forward_and_backward_run_the_cpu_kernels():
    for module in (pyfusedbn.GroupNormAct(2, 4), pyfusedbn.InstanceNormAct2d(4), pyfusedbn.LayerNormAct2d(4)):
        x = torch.randn(2, 4, 5, 5, requires_grad=True)
        before = ops.kernel_calls("cpu")
        module(x).sum().backward()
        # stats + apply forward, reduce + elementwise backward
        assert ops.kernel_calls("cpu") - before == 4, type(module).__name__
    for name in GROUP_KERNEL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pyfusedbn::{name}", "CPU"), name


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), pyfusedbn.GroupNormAct(4, 8),
                                torch.nn.Conv2d(8, 8, 3, padding=1), pyfusedbn.InstanceNormAct2d(8, affine=True),
                                pyfusedbn.LayerNormAct2d(8))
    x = torch.randn(2, 3, 6, 6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x)
    ref.sum().backward()
    tol = TOLERANCE[torch.float32]
    assert_close("output", out, ref, tol)
    for i, (g, p) in enumerate(zip(grads, model.parameters())):
        assert_close(f"grad {i}", g, p.grad, tol)
    torch._dynamo.reset()
