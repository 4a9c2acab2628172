"""The CUDA kernels against the same float64 references as the CPU ones, and against torch's own
nn.BatchNorm*d (cuDNN) + torch.nn.functional activation on the GPU. Marked `cuda`: they skip
where no GPU is present and run where one is (see README, GPU validation).

Tolerances come from helpers.TOLERANCE (one table, justified there per dtype). Against torch's
module: float32 results agree within twice the tolerance (both round independently); bfloat16 and
float16 ones are held to torch's own error against the float64 reference on the same rounded
inputs (compare_with_torch). Ours is also held to the float64 reference on its own."""
import pytest
import torch

import pyfusedbn
from pyfusedbn._ops import ops
from pyfusedbn.activations import torch_activation
from helpers import (KINKS, TOLERANCE, assert_as_accurate_as, assert_close, low_precision_slack,
                     near_kink, param_dtype, random_input, reference_batch_norm_act)
from test_parity import PARAMS, TORCH_MODULES, make_module, reference_step, run_steps

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LOW_PRECISION = (torch.float32, torch.bfloat16, torch.float16)
NCHW, NHWC = torch.contiguous_format, torch.channels_last
FORMATS = {"nchw": NCHW, "nhwc": NHWC}


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("activation", pyfusedbn.ACTIVATION_NAMES)
def test_every_activation(activation, memory_format, dtype, residual, generator, poison_empty):
    """Two training steps and one eval step: outputs, every gradient, running statistics."""
    shape = (4, 6, 5, 7)
    module = make_module(4, 6, dtype, generator, device="cuda", activation=activation,
                         activation_param=PARAMS.get(activation))
    run_steps(module, 4, shape, memory_format, dtype, activation, PARAMS.get(activation), residual,
              generator, device="cuda")


# (rank, shape, memory format) for nn.BatchNorm1d/2d/3d; 8 channels and 8-multiple planes take
# the 16-byte vector paths, 6 channels / odd planes the scalar ones.
TORCH_CASES = {
    "1d_rows": ((64, 8), NCHW),
    "1d_seq": ((4, 6, 9), NCHW),
    "2d_nchw": ((4, 8, 4, 4), NCHW),
    "2d_nhwc": ((4, 8, 5, 5), NHWC),
    "2d_nhwc_c6": ((4, 6, 5, 5), NHWC),
    "3d_ndhwc": ((2, 8, 3, 4, 5), torch.channels_last_3d),
}


def away_from_kinks(activation, z, dtype):
    """torch's module rounds its BatchNorm output to the dtype before the activation; the fused
    kernel does not: near a kink, which side the derivative takes is decided by that rounding."""
    return ~near_kink(activation, z, 8 * torch.finfo(dtype).eps)


def compare_with_torch(name, ours, theirs, reference, dtype):
    """float32: both sides round independently once, so they agree within twice the tolerance.
    bfloat16/float16: torch's module rounds between ops (BatchNorm output, then the activation and
    its backward), so its result is no yardstick; both are measured against the float64 reference
    on the same rounded inputs and ours may be at most as wrong as torch's (helpers' slack)."""
    if dtype == torch.float32:
        assert_close(name, ours, theirs, 2 * TOLERANCE[dtype])
    else:
        assert_as_accurate_as(name, ours, theirs, reference, low_precision_slack(dtype))


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", list(TORCH_CASES))
@pytest.mark.parametrize("activation", pyfusedbn.ACTIVATION_NAMES)
def test_matches_torch_module(activation, case, dtype, residual, generator):
    """Swap-in parity with nn.BatchNorm*d + the F activation on the GPU, same dtype, same
    state_dict: three training steps then eval. Ours is held to the float64 reference at the
    dtype's tolerance, and to torch's module at twice it (both round independently)."""
    shape, memory_format = TORCH_CASES[case]
    rank, channels, param = len(shape), shape[1], PARAMS.get(activation)
    ours = make_module(rank, channels, dtype, generator, device="cuda", activation=activation,
                       activation_param=param)
    theirs = TORCH_MODULES[rank](channels, dtype=param_dtype(dtype)).cuda()
    theirs.load_state_dict(ours.state_dict())
    act = torch_activation(activation, param)
    tol = TOLERANCE[dtype]
    for step in range(4):
        training = step < 3
        ours.train(training)
        theirs.train(training)
        for t in (ours.weight, ours.bias, theirs.weight, theirs.bias):
            t.grad = None
        state = tuple(t.detach().clone() for t in (ours.weight, ours.bias, ours.running_mean, ours.running_var))
        x = random_input(shape, dtype, memory_format, generator).cuda()
        res = random_input(shape, dtype, memory_format, generator, mean=0.0).cuda() if residual else None
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1 = ours(x1, res)
        z2 = theirs(x2)
        y2 = act(z2 + res if residual else z2)
        dy = torch.randn(y1.shape, generator=generator, dtype=torch.float64).to(dtype).cuda()
        y1.backward(dy)
        y2.backward(dy)
        y_ref, grads_ref, _, _ = reference_step(state, x, res, dy, training, 0.0, ours.eps, activation, param)

        where = f"step {step} ({'train' if training else 'eval'})"
        assert_close(f"{where} output vs float64", y1, y_ref, tol)
        assert_close(f"{where} grad input vs float64", x1.grad, grads_ref["input"], tol)
        assert_close(f"{where} grad weight vs float64", ours.weight.grad, grads_ref["weight"], tol)
        assert_close(f"{where} grad bias vs float64", ours.bias.grad, grads_ref["bias"], tol)
        compare_with_torch(f"{where} output vs torch", y1, y2, y_ref, dtype)
        w64, b64, rm64, rv64 = (t.double().cpu() for t in state)
        z_ref = torch.nn.functional.batch_norm(x.double().cpu(), rm64, rv64, w64, b64, training, 0.0, ours.eps)
        if residual:
            z_ref = z_ref + res.double().cpu()
        keep = away_from_kinks(activation, z_ref, dtype)
        compare_with_torch(f"{where} grad input vs torch (away from kinks)", x1.grad.cpu()[keep],
                           x2.grad.cpu()[keep], grads_ref["input"][keep], dtype)
        if activation not in KINKS:
            compare_with_torch(f"{where} grad weight vs torch", ours.weight.grad, theirs.weight.grad,
                               grads_ref["weight"], dtype)
            compare_with_torch(f"{where} grad bias vs torch", ours.bias.grad, theirs.bias.grad,
                               grads_ref["bias"], dtype)
    for key, value in theirs.state_dict().items():
        assert_close(f"state_dict[{key}]", ours.state_dict()[key].double(), value.double(),
                     TOLERANCE[param_dtype(dtype)])


# Odd sizes: C not a multiple of 4 or 8, a single spatial position, 3x3 and 7x7 maps, C = 2048,
# ranks 2, 3 and 5, and a channel count above one block of 32 channel vectors.
ODD_SHAPES = [
    ((5, 3, 7, 7), NCHW), ((5, 3, 7, 7), NHWC), ((16, 13, 3, 3), NHWC), ((16, 13, 3, 3), NCHW),
    ((64, 37, 1, 1), NCHW), ((8, 2048, 7, 7), NHWC), ((4, 2048, 7, 7), NCHW), ((33, 70), NCHW),
    ((3, 9, 11), NCHW), ((2, 5, 3, 4, 5), torch.channels_last_3d), ((2, 5, 3, 4, 5), NCHW),
    ((2, 3, 64, 64), NCHW), ((4, 264, 2, 2), NHWC), ((2, 12, 6), NCHW),
]


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("shape,memory_format", ODD_SHAPES, ids=[f"{s}-{f}" for s, f in ODD_SHAPES])
def test_odd_sizes(shape, memory_format, dtype, generator, poison_empty):
    module = make_module(len(shape), shape[1], dtype, generator, device="cuda", activation="silu")
    run_steps(module, len(shape), shape, memory_format, dtype, "silu", None, True, generator,
              device="cuda")


def misaligned(x, memory_format):
    """x's values in a tensor whose data starts one element past a 16-byte boundary (a view with
    a storage offset), with x's strides: the kernels must take their scalar path."""
    storage = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    view = storage[1:].as_strided(x.shape, x.contiguous(memory_format=memory_format).stride())
    view.copy_(x)
    assert view.data_ptr() % 16 != 0 and view.is_contiguous(memory_format=memory_format)
    return view


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
def test_misaligned_views_match_aligned(memory_format, dtype, generator):
    """C and the plane are multiples of 8 (vector paths), but a storage offset forbids 16-byte
    accesses: forward and backward give the aligned results."""
    x = random_input((4, 16, 4, 8), dtype, memory_format, generator).cuda()
    res = random_input(x.shape, dtype, memory_format, generator, mean=0.0).cuda()
    dy = random_input(x.shape, dtype, memory_format, generator, mean=0.0).cuda()
    results = []
    for make in (lambda t: t.clone(), lambda t: misaligned(t, memory_format)):
        xi, ri = make(x).requires_grad_(), make(res).requires_grad_()
        y = pyfusedbn.batch_norm_act(xi, None, None, training=True, activation="gelu", residual=ri)
        y.backward(make(dy))
        results.append((y, xi.grad, ri.grad))
    for name, got, want in zip(("output", "grad input", "grad residual"), results[1], results[0]):
        assert_close(name, got, want, TOLERANCE[dtype])


@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
def test_single_sample_eval(memory_format, generator, poison_empty):
    module = make_module(4, 8, torch.float32, generator, device="cuda").eval()
    x = random_input((1, 8, 5, 5), torch.float32, memory_format, generator).cuda()
    expected = reference_batch_norm_act(x.cpu().double(), module.running_mean.cpu().double(),
                                        module.running_var.cpu().double(), module.weight.cpu().double(),
                                        module.bias.cpu().double(), False, 0.0, 1e-5, "relu", None)
    assert_close("output", module(x), expected, TOLERANCE[torch.float32])


@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
def test_large_tensor(memory_format, generator):
    """64 x 256 x 56 x 56 (51M elements): many blocks per channel, partial merges at scale.
    Over 2^31 elements would need 8.6 GB per float32 tensor, too much for a test: the kernels'
    offsets are int64 throughout, which this size cannot prove."""
    x = random_input((64, 256, 56, 56), torch.float32, memory_format, torch.Generator().manual_seed(0))
    x = x.cuda()
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
    # Of these 51M values a few dozen sit within float32 rounding of relu's kink (seed 0: 41 with
    # |z| < 1e-6, one at z = 3e-8 where a mean one ulp off gives x - mean = 0 and relu'(0) = 0):
    # which side they take is rounding, not a defect, so they are compared with the rest away
    # from the kink. (This is what a GPU run reported as a wrong channels_last gradient.)
    z_ref = (x64.detach() - mean_ref[:, None, None]) * (var_ref[:, None, None] + 1e-5).rsqrt()
    keep = away_from_kinks("relu", z_ref, torch.float32)
    assert_close("grad input (away from the kink)", x.grad[keep], x64.grad[keep], TOLERANCE[torch.float32])


def test_kernels_ran_on_the_gpu():
    assert pyfusedbn.backends()["cuda"] is True
    before = ops.kernel_calls("cuda")
    x = torch.randn(4, 3, 5, 5, device="cuda", requires_grad=True)
    pyfusedbn.BatchNormAct2d(3).cuda()(x).sum().backward()
    # stats + apply forward, reduce + elemt backward
    assert ops.kernel_calls("cuda") - before == 4


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("activation,param", [("identity", 0.0), ("leaky_relu", 0.1), ("elu", 1.0)])
def test_from_output_ops(activation, param, memory_format, dtype, residual, generator):
    """The backward ops with saved = the forward's output (from_output=True) give what they give
    with saved = its input: the kernels rebuild the pre-activation through the inverse."""
    shape = (4, 8, 5, 4)
    x = random_input(shape, dtype, memory_format, generator).cuda()
    res = random_input(shape, dtype, memory_format, generator, mean=0.0).cuda() if residual else None
    dy = random_input(shape, dtype, memory_format, generator, mean=0.0).cuda()
    pdtype = param_dtype(dtype)
    w = torch.linspace(0.5, 1.5, shape[1], dtype=pdtype, device="cuda")
    b = torch.linspace(-0.3, 0.4, shape[1], dtype=pdtype, device="cuda")
    out, mean, invstd = ops.batch_norm_act_train(x, w, b, res, None, None, 0.1, 1e-5, activation, param)
    count = x.numel() // shape[1]
    results = []
    for saved, from_output in ((x, False), (out, True)):
        sum_g, sum_g_xhat = ops.batch_norm_act_backward_reduce(dy, saved, mean, invstd, w, b, res,
                                                               activation, param, from_output)
        grads = ops.batch_norm_act_backward_elemt(dy, saved, mean, invstd, w, b, res, sum_g / count,
                                                  sum_g_xhat / count, activation, param, from_output)
        results.append((sum_g, sum_g_xhat) + tuple(grads))
    names = ("sum_g", "sum_g_xhat", "grad input", "grad residual")
    # The inverse (elu's log1p) and the division by scale cost a few ulps of the saved dtype.
    tol = 10 * TOLERANCE[dtype]
    for name, got, want in zip(names, results[1], results[0]):
        assert_close(f"{name} (from output)", got, want, tol)


@pytest.mark.parametrize("activation,param", [("identity", None), ("leaky_relu", 0.1), ("elu", 1.0)])
@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
def test_opcheck(memory_format, dtype, generator):
    from test_opcheck import OP_CASES, sample_args

    for name, residual in OP_CASES:
        args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a
                     for a in sample_args(name, dtype, memory_format, residual, generator))
        torch.library.opcheck(getattr(ops, name).default, args)


def test_opcheck_from_output(generator):
    from test_opcheck import sample_args

    for name in ("batch_norm_act_backward_reduce", "batch_norm_act_backward_elemt"):
        args = sample_args(name, torch.float32, NHWC, True, generator)
        args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args[:-2]) + ("elu", 1.0)
        torch.library.opcheck(getattr(ops, name).default, args, {"from_output": True})


# ResNet-50's deep layers (and one wide one) at a small batch, both layouts: the planar kernels
# walk a channel's (sample, plane vector) items with a carry (7x7 = 49 values: scalar accesses,
# items crossing plane boundaries inside a warp), 14x14 = 196 bfloat16 values take the 8-byte
# vector path, 2048 channels in channels_last span 8-16 column blocks. silu and gelu have no
# kink, so every element is compared (see test_large_tensor for relu at scale).
DEEP_SHAPES = [(8, 2048, 7, 7), (8, 1024, 14, 14), (4, 512, 28, 28), (2, 64, 112, 112)]


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("shape", DEEP_SHAPES, ids=["x".join(map(str, s)) for s in DEEP_SHAPES])
@pytest.mark.parametrize("activation,residual", [("silu", True), ("gelu", False)])
def test_deep_layer_shapes(shape, memory_format, dtype, activation, residual, generator, poison_empty):
    module = make_module(len(shape), shape[1], dtype, generator, device="cuda", activation=activation)
    run_steps(module, len(shape), shape, memory_format, dtype, activation, None, residual, generator,
              training_steps=1, device="cuda")


@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
def test_deep_layer_misaligned_matches_aligned(memory_format, generator):
    """The 8-byte bfloat16 path (14x14 planes) and its scalar fallback for a misaligned view give
    the same results."""
    x = random_input((4, 64, 14, 14), torch.bfloat16, memory_format, generator).cuda()
    dy = random_input(x.shape, torch.bfloat16, memory_format, generator, mean=0.0).cuda()
    results = []
    for make in (lambda t: t.clone(), lambda t: misaligned(t, memory_format)):
        xi = make(x).requires_grad_()
        y = pyfusedbn.batch_norm_act(xi, None, None, training=True, activation="silu")
        y.backward(make(dy))
        results.append((y, xi.grad))
    for name, got, want in zip(("output", "grad input"), results[1], results[0]):
        assert_close(name, got, want, TOLERANCE[torch.bfloat16])
