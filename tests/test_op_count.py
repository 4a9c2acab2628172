"""The host ops a fused layer dispatches: on a GPU each is a kernel launch, so their number (not
only the kernels' speed) decides whether a converted network trains faster. Counted with the
torch profiler as benchmarks/host_overhead.py counts them; never timed here."""
import pytest
import torch

import pyfusedbn
from pyfusedbn.testing import count_ops, layer_steps

# One training forward+backward of BatchNormAct2d(16) on (8, 16, 4, 4), torch 2.13 CPU: the layer
# op and the training op it calls (which also counts num_batches_tracked) with 3 allocations
# (output, mean, invstd), the backward op with 3 (grad_input, grad_weight, grad_bias), autograd's
# 3 gradient accumulations. Eager torch: 26. Raise it only with a reason.
FUSED_LAYER_OPS = 12
# One training forward+backward of GroupNormAct(4, 16) on (8, 16, 4, 4), torch 2.13 CPU: the layer
# op calling the kernel op, with 4 allocations (output, mean, rstd, one workspace for the
# per-(sample, channel) coefficients), the backward op with 5 (grad_input, grad_weight,
# grad_bias, the empty grad_residual, one workspace for coefficients and sums), autograd's 3
# gradient accumulations. Was 27 (21 allocations) with a tensor per intermediate. Eager torch
# GroupNorm + SiLU: more. The CUDA test (test_group_norm_cuda.py) holds the GPU path to it too.
GROUP_NORM_LAYER_OPS = 15
# Per-channel algebra must stay inside the ops: none of these may be dispatched per call.
PER_CHANNEL_OPS = ("aten::to", "aten::_to_copy", "aten::copy_", "aten::zeros_like", "aten::zeros",
                   "aten::mul", "aten::mul_", "aten::rsqrt", "aten::rsqrt_", "aten::addcmul",
                   "aten::neg", "aten::div", "aten::sub", "aten::contiguous")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_layer_dispatches_no_more_ops_than_eager(one_thread):
    steps = layer_steps()
    fused, fused_ops = count_ops(steps["fused"])
    eager, _ = count_ops(steps["eager"])
    assert fused <= eager, f"fused {fused} ops > eager {eager}: {fused_ops}"
    assert fused <= FUSED_LAYER_OPS, f"fused layer dispatches {fused} ops (pinned {FUSED_LAYER_OPS}): {fused_ops}"


def test_forward_and_backward_are_one_op_each(one_thread):
    _, ops = count_ops(layer_steps()["fused"])
    ours = {name: n for name, n in ops.items() if name.startswith("pyfusedbn::")}
    # batch_norm_act (the layer op, autograd in C++) calls the training op; its backward one op.
    assert ours == {"pyfusedbn::batch_norm_act": 1, "pyfusedbn::batch_norm_act_train": 1,
                    "pyfusedbn::batch_norm_act_backward": 1}, ops
    per_channel = {name: ops[name] for name in PER_CHANNEL_OPS if name in ops}
    assert not per_channel, f"per-channel host ops dispatched: {per_channel}"


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["normal", "memory_efficient"])
def test_eval_mode_backward_is_one_op_each_way(memory_efficient, one_thread):
    layer = pyfusedbn.BatchNormAct2d(4, activation="leaky_relu", memory_efficient=memory_efficient).eval()
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    grad = torch.randn(3, 4, 5, 5)  # (not sum()'s expanded gradient, which needs a contiguous copy)
    _, ops = count_ops(lambda: layer(x).backward(grad))
    ours = {name: n for name, n in ops.items() if name.startswith("pyfusedbn::")}
    expected = {"pyfusedbn::batch_norm_act_eval_for_backward": 1, "pyfusedbn::batch_norm_act_backward": 1}
    if not memory_efficient:
        expected["pyfusedbn::batch_norm_act"] = 1
    assert ours == expected, ops
    if not memory_efficient:  # (that mode clamps the weight with a few host ops)
        assert not {name for name in PER_CHANNEL_OPS if name in ops}, ops


def test_group_norm_layer_is_one_op_each_way(one_thread):
    # GroupNormAct's eager path: the layer op (autograd in C++) calling the kernel op, one backward
    # op, and its per-(sample, group) algebra inside them (a CPU loop), not as host tensor ops.
    layer = pyfusedbn.GroupNormAct(4, 16)
    x = torch.randn(8, 16, 4, 4, requires_grad=True)
    grad = torch.randn(8, 16, 4, 4)
    _, ops = count_ops(lambda: layer(x).backward(grad))
    eager_layer = torch.nn.Sequential(torch.nn.GroupNorm(4, 16), torch.nn.SiLU())
    _, eager_ops = count_ops(lambda: eager_layer(x).backward(grad))
    ours = {name: n for name, n in ops.items() if name.startswith("pyfusedbn::")}
    assert ours == {"pyfusedbn::group_norm_act_layer": 1, "pyfusedbn::group_norm_act": 1,
                    "pyfusedbn::group_norm_act_backward": 1}, ops
    assert not {name for name in PER_CHANNEL_OPS if name in ops}, ops
    assert sum(ops.values()) <= GROUP_NORM_LAYER_OPS, f"pinned {GROUP_NORM_LAYER_OPS}: {ops}"
    # Allocations aside (a handful of per-(sample, group) buffers, no kernel launch on a GPU),
    # no more ops than eager's GroupNorm + SiLU.
    launches = lambda counts: sum(n for name, n in counts.items() if not name.startswith("aten::empty"))
    assert launches(ops) <= launches(eager_ops), f"fused {ops} vs eager {eager_ops}"
