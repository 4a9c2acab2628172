"""The CUDA kernels against the same float64 references as the CPU ones. Marked `cuda`: they
skip where no GPU is present and run where one is (see README, GPU validation)."""
import pytest
import torch

import pyfusedbn
from pyfusedbn._ops import ops
from helpers import TOLERANCE, assert_close, random_input, reference_batch_norm_act
from test_parity import PARAMS, make_module, run_steps

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
NCHW, NHWC = torch.contiguous_format, torch.channels_last


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("memory_format", [NCHW, NHWC], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation", pyfusedbn.ACTIVATION_NAMES)
def test_every_activation(activation, memory_format, dtype, residual, generator):
    shape = (4, 6, 5, 7)
    module = make_module(4, 6, dtype, generator, device="cuda", activation=activation,
                         activation_param=PARAMS.get(activation))
    run_steps(module, 4, shape, memory_format, dtype, activation, PARAMS.get(activation), residual,
              generator, device="cuda")


# Odd sizes: C not a multiple of 4 or 8, a single spatial position, 3x3 and 7x7 maps, C = 2048,
# ranks 2, 3 and 5, one sample (eval) and a channel count above one block of 32.
ODD_SHAPES = [
    ((5, 3, 7, 7), NCHW), ((5, 3, 7, 7), NHWC), ((16, 13, 3, 3), NHWC), ((16, 13, 3, 3), NCHW),
    ((64, 37, 1, 1), NCHW), ((8, 2048, 7, 7), NHWC), ((4, 2048, 7, 7), NCHW), ((33, 70), NCHW),
    ((3, 9, 11), NCHW), ((2, 5, 3, 4, 5), torch.channels_last_3d), ((2, 5, 3, 4, 5), NCHW),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,memory_format", ODD_SHAPES, ids=[f"{s}-{f}" for s, f in ODD_SHAPES])
def test_odd_sizes(shape, memory_format, dtype, generator):
    module = make_module(len(shape), shape[1], dtype, generator, device="cuda", activation="silu")
    run_steps(module, len(shape), shape, memory_format, dtype, "silu", None, True, generator,
              device="cuda")


@pytest.mark.parametrize("memory_format", [NCHW, NHWC], ids=["nchw", "nhwc"])
def test_single_sample_eval(memory_format, generator):
    module = make_module(4, 8, torch.float32, generator, device="cuda").eval()
    x = random_input((1, 8, 5, 5), torch.float32, memory_format, generator).cuda()
    expected = reference_batch_norm_act(x.cpu().double(), module.running_mean.cpu().double(),
                                        module.running_var.cpu().double(), module.weight.cpu().double(),
                                        module.bias.cpu().double(), False, 0.0, 1e-5, "relu", None)
    assert_close("output", module(x), expected, TOLERANCE[torch.float32])


@pytest.mark.parametrize("memory_format", [NCHW, NHWC], ids=["nchw", "nhwc"])
def test_large_tensor(memory_format, generator):
    """64 x 256 x 56 x 56 (51M elements): many blocks per channel, partial merges at scale.
    (Over 2^31 elements would need ~9 GB per tensor in float32: the kernels index with int64.)"""
    x = random_input((64, 256, 56, 56), torch.float32, memory_format, generator).cuda()
    mean, var = ops.batch_norm_stats(x)
    var_ref, mean_ref = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    assert_close("mean", mean, mean_ref, TOLERANCE[torch.float32])
    assert_close("var", var, var_ref, TOLERANCE[torch.float32])
    x.requires_grad_()
    y = pyfusedbn.batch_norm_act(x, None, None, training=True, activation="relu")
    dy = torch.randn_like(y)
    y.backward(dy)
    x64 = x.detach().double().requires_grad_()
    reference_batch_norm_act(x64, None, None, None, None, True, 0.1, 1e-5, "relu", None).backward(dy.double())
    assert_close("grad input", x.grad, x64.grad, TOLERANCE[torch.float32])


def test_kernels_ran_on_the_gpu():
    assert pyfusedbn.backends()["cuda"] is True
    before = ops.kernel_calls("cuda")
    x = torch.randn(4, 3, 5, 5, device="cuda", requires_grad=True)
    pyfusedbn.BatchNormAct2d(3).cuda()(x).sum().backward()
    assert ops.kernel_calls("cuda") - before == 4


@pytest.mark.parametrize("activation,param", [("identity", None), ("leaky_relu", 0.1), ("elu", 1.0)])
@pytest.mark.parametrize("memory_format", [NCHW, NHWC], ids=["nchw", "nhwc"])
def test_memory_saving_backward(activation, param, memory_format, generator):
    x = random_input((4, 6, 5, 5), torch.float32, memory_format, generator).cuda()
    grads = []
    for memory_efficient in (False, True):
        xi = x.clone().requires_grad_()
        w = torch.linspace(0.5, 1.5, 6, device="cuda").requires_grad_()
        y = pyfusedbn.batch_norm_act(xi, None, None, w, None, training=True, activation=activation,
                                     activation_param=param, memory_efficient=memory_efficient)
        y.backward(torch.ones_like(y))
        grads.append((xi.grad, w.grad))
    assert_close("grad input", grads[1][0], grads[0][0], TOLERANCE[torch.float32])
    assert_close("grad weight", grads[1][1], grads[0][1], TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("memory_format", [NCHW, NHWC], ids=["nchw", "nhwc"])
def test_opcheck(memory_format, dtype, generator):
    from test_opcheck import OP_CASES, sample_args

    for name, residual in OP_CASES:
        args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a
                     for a in sample_args(name, dtype, memory_format, residual, generator))
        torch.library.opcheck(getattr(ops, name).default, args)
