"""The CUDA backend's real host code, without a GPU: tests/emulated_backend.py loads a pyfusedbn._C
built from csrc/common, csrc/batch_norm, csrc/group_norm and the CUDA bindings (csrc/cuda/*.cpp:
workspace sizing, grid from the SM count, dtype dispatch, finalize, from_output, residual,
eval-for-backward, the C++ autograd) with csrc/cuda's kernels run by the CUDA execution emulator
over CPU memory, registered for CPU tensors; there are no CPU kernels in it. The unchanged Python
layer runs on it, and the CPU suite's tests (their float64 references) are reused here.

Each test runs on one emulated device (SM count and scheduling order), chosen from the test's id
so that the suite covers 1, 4, 108 and 132 SMs and every order; test_orders_agree_bitwise runs
every order on the same inputs. Its own process: `make test-emulated-backend`."""
import zlib

import emulated_backend

EMULATOR = emulated_backend.load()  # before pyfusedbn: it becomes pyfusedbn._C

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
import torch  # noqa: E402

import pyfusedbn  # noqa: E402
from pyfusedbn._ops import ops  # noqa: E402
from group_norm_cases import GROUP_CASES, check_against_float64  # noqa: E402
from helpers import TOLERANCE, assert_close, random_input, reference_batch_norm_act  # noqa: E402
from test_parity import PARAMS, make_module, run_steps  # noqa: E402

import test_fuzz as batch_norm_fuzz  # noqa: E402
import test_gradcheck as gradcheck_tests  # noqa: E402
import test_group_norm_fuzz as group_norm_fuzz  # noqa: E402
import test_group_norm_ops as group_norm_ops_tests  # noqa: E402
import test_memory_efficient as memory_efficient_tests  # noqa: E402
# The CPU suite's tests that are small already, run here on the emulated CUDA backend as they are.
from test_parity import (test_functional_training_with_given_running_stats,  # noqa: E402,F401
                         test_matches_torch_module_over_steps, test_module_options)
from test_gradcheck import test_gradgradcheck_eval_no_affine  # noqa: E402,F401
from test_memory_efficient import (test_inplace_aliases_input, test_no_grad_and_double_backward,  # noqa: E402,F401
                                   test_tiny_weight_clamp)
from test_memory_efficient import test_module_options as test_memory_efficient_module_options  # noqa: E402,F401
from test_group_norm_parity import test_empty_batch, test_every_activation, test_without_affine  # noqa: E402,F401
from test_group_norm_ops import test_gradcheck_instance_and_layer_norm  # noqa: E402,F401

# (SM count, occupancy answer, order): the emulated devices a test may run on.
DEVICES = [(1, 8, "forward"), (4, 8, "reverse"), (108, 8, "random:1"), (132, 16, "random:2"), (4, 16, "forward")]
ORDERS = ["forward", "reverse", "random:3"]
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
NCHW, NHWC = torch.contiguous_format, torch.channels_last


@pytest.fixture(autouse=True)
def emulated_device(request):
    """Configures the test's emulated device; afterwards, no CPU kernel may have run (there is
    none in this library: every op went through the CUDA bindings)."""
    device = DEVICES[zlib.crc32(request.node.nodeid.encode()) % len(DEVICES)]
    EMULATOR.configure(*device)
    yield device
    assert ops.kernel_calls("cpu") == 0, "a CPU kernel ran in the emulated CUDA backend"


def test_the_cuda_bindings_run():
    """The ops go through the CUDA bindings and launch the emulated kernels."""
    assert pyfusedbn._ops.backends() == {"cpu": True, "cuda": False}  # the CUDA code, registered for CPU
    calls, launches = ops.kernel_calls("cuda"), EMULATOR.launches()
    x = torch.randn(4, 6, 3, 5, requires_grad=True)
    pyfusedbn.BatchNormAct2d(6, activation="silu")(x).sum().backward()
    pyfusedbn.GroupNormAct(3, 6, activation="gelu")(x).sum().backward()
    assert ops.kernel_calls("cuda") > calls and EMULATOR.launches() > launches


# test_cuda.py's matrix (activation x dtype x layout x residual) in fewer runs: every activation
# with each (dtype, layout, residual) of COMBINATIONS, and every combination of those for two.
COMBINATIONS = [(d, f, r) for d in DTYPES for f in (NCHW, NHWC) for r in (False, True)]
BATCH_NORM_MATRIX = sorted({(a, *COMBINATIONS[(i * 5 + j * 11) % len(COMBINATIONS)])
                            for i, a in enumerate(pyfusedbn.ACTIVATION_NAMES) for j in range(4)}
                           | {(a, *c) for a in ("silu", "leaky_relu") for c in COMBINATIONS}, key=str)


@pytest.mark.parametrize("activation,dtype,memory_format,residual", BATCH_NORM_MATRIX, ids=str)
def test_batch_norm_every_activation(activation, dtype, memory_format, residual, generator, poison_empty):
    """Two training steps and an eval step against float64 (test_parity.run_steps)."""
    module = make_module(4, 6, dtype, generator, activation=activation, activation_param=PARAMS.get(activation))
    run_steps(module, 4, (3, 6, 2, 5), memory_format, dtype, activation, PARAMS.get(activation), residual,
              generator)


# The CPU suite's gradchecks (float64) and memory-efficient mode, at fewer activations.
FEW_ACTIVATIONS = ["identity", "leaky_relu", "silu", "softplus"]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("activation", FEW_ACTIVATIONS)
def test_gradcheck(activation, training, generator):
    gradcheck_tests.test_gradcheck(activation, training, generator)


@pytest.mark.parametrize("activation", FEW_ACTIVATIONS)
def test_group_norm_gradcheck(activation, generator):
    group_norm_ops_tests.test_gradcheck(activation, generator)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", list(memory_efficient_tests.LAYOUTS))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation,param", memory_efficient_tests.CASES[::2])
def test_memory_efficient_same_as_normal_mode(activation, param, residual, layout, dtype, generator):
    memory_efficient_tests.test_same_as_normal_mode_and_torch(activation, param, residual, layout, dtype, generator)


def _training_step(x, module):
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y).to(y.dtype))
    return [y, x.grad, module.weight.grad]


@pytest.mark.parametrize("num_sms", [1, 4, 108, 132])
def test_orders_agree_bitwise(num_sms, generator):
    """One BatchNorm and one GroupNorm training step in every scheduling order: bit-identical (a
    missing barrier, or a result depending on block order, shows as a difference)."""
    x = random_input((5, 8, 3, 7), torch.float32, NHWC, generator)
    results = []
    for order in ORDERS:
        EMULATOR.configure(num_sms, 8, order)
        torch.manual_seed(0)
        results.append(_training_step(x, pyfusedbn.BatchNormAct2d(8, activation="silu"))
                       + _training_step(x, pyfusedbn.GroupNormAct(4, 8, activation="silu")))
    for order, result in zip(ORDERS[1:], results[1:]):
        for i, (a, b) in enumerate(zip(results[0], result)):
            assert torch.equal(a, b), f"{order} differs from forward in result {i}"


# Finalize and update_running_stats with parameters / running buffers of other dtypes than the
# kernels' accumulate type: typed half/bf16 arguments, or the host fallbacks (as_acc,
# channel_params, update_running_stats for float64 / mixed dtypes / non-contiguous buffers).
BUFFER_CASES = {
    "half_params_half_input": (torch.float16, torch.float16),
    "bf16_params_bf16_input": (torch.bfloat16, torch.bfloat16),
    "bf16_params_float_input": (torch.float32, torch.bfloat16),
    "double_params_float_input": (torch.float32, torch.float64),
    "float_params_double_input": (torch.float64, torch.float32),
}


@pytest.mark.parametrize("momentum", [0.3, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("case", BUFFER_CASES, ids=list(BUFFER_CASES))
def test_finalize_parameter_and_buffer_dtypes(case, momentum, generator):
    dtype, buffer_dtype = BUFFER_CASES[case]
    module = make_module(4, 5, torch.float64, generator, activation="leaky_relu", momentum=momentum).to(buffer_dtype)
    state = [t.detach().double().clone() for t in (module.weight, module.bias, module.running_mean, module.running_var)]
    for step in range(3):
        x = random_input((3, 5, 2, 3), dtype, generator=generator)
        y = module(x)
        factor = 1.0 / (step + 1) if momentum is None else momentum
        y_ref = reference_batch_norm_act(x.double(), state[2], state[3], state[0], state[1], True, factor, module.eps,
                                         "leaky_relu", None)
        # The reference reads the same (rounded) parameters; the buffers round to the lower precision.
        tol = TOLERANCE[dtype if buffer_dtype.itemsize > dtype.itemsize else buffer_dtype]
        assert_close(f"step {step} output", y, y_ref, TOLERANCE[dtype])
        assert_close(f"step {step} running_mean", module.running_mean, state[2], tol)
        assert_close(f"step {step} running_var", module.running_var, state[3], tol)
        state[2], state[3] = module.running_mean.double(), module.running_var.double()


def test_non_contiguous_running_buffers(generator):
    x = random_input((4, 6, 3, 3), torch.float32, generator=generator)
    running = torch.randn(6, 2, generator=generator)
    running[:, 1] = torch.rand(6, generator=generator) + 0.5
    mean_view, var_view = running[:, 0], running[:, 1]  # stride 2
    mean_ref, var_ref = mean_view.double(), var_view.double()
    y = pyfusedbn.batch_norm_act(x, mean_view, var_view, training=True, momentum=0.2, activation="relu")
    y_ref = reference_batch_norm_act(x.double(), mean_ref, var_ref, None, None, True, 0.2, 1e-5, "relu", None)
    assert_close("output", y, y_ref, TOLERANCE[torch.float32])
    assert_close("running_mean", running[:, 0], mean_ref, TOLERANCE[torch.float32])
    assert_close("running_var", running[:, 1], var_ref, TOLERANCE[torch.float32])


# Which of (input, weight and bias, residual) need gradients: the backward ops' partial output masks.
MASKS = {"input_only": (True, False, False), "params_only": (False, True, False),
         "residual_only": (False, False, True), "params_and_residual": (False, True, True)}


def _masked_grads(norm, reference, x, residual, needs):
    weight = torch.rand(6, dtype=x.dtype) + 0.5
    bias = torch.randn(6, dtype=x.dtype)
    results = []
    for fn, cast in ((norm, lambda t: t), (reference, lambda t: t.double())):
        leaves = [cast(t).clone().requires_grad_(need) for t, need in
                  ((x, needs[0]), (weight, needs[1]), (bias, needs[1]), (residual, needs[2]))]
        y = fn(*leaves)
        y.backward(torch.linspace(-2, 2, y.numel(), dtype=y.dtype).view_as(y))
        results.append([t.grad for t in leaves])
    for name, ours, ref in zip(("input", "weight", "bias", "residual"), *results):
        assert (ours is None) == (ref is None), f"grad {name}: computed where not needed, or missing"
        if ours is not None:
            assert_close(f"grad {name}", ours, ref, TOLERANCE[x.dtype])


@pytest.mark.parametrize("needs", MASKS.values(), ids=list(MASKS))
def test_partial_output_masks(needs, generator):
    x = random_input((3, 6, 2, 4), torch.float32, generator=generator)
    residual = random_input((3, 6, 2, 4), torch.float32, generator=generator)
    _masked_grads(lambda x, w, b, r: pyfusedbn.batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, "silu", None, r),
                  lambda x, w, b, r: reference_batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, "silu", None, r),
                  x, residual, needs)
    _masked_grads(lambda x, w, b, r: pyfusedbn.group_norm_act(x, 3, w, b, 1e-5, "silu", residual=r),
                  lambda x, w, b, r: torch.nn.functional.silu(torch.nn.functional.group_norm(x, 3, w, b, 1e-5) + r),
                  x, residual, needs)


@pytest.mark.parametrize("case", GROUP_CASES[:4], ids=[c[0] for c in GROUP_CASES[:4]])
def test_group_norm_is_deterministic(case, generator):
    """Two runs on the same inputs give the same bits (reductions in a fixed order)."""
    _, shape, memory_format, groups = case
    x = random_input(shape, torch.float32, memory_format, generator)
    runs = [_training_step(x, pyfusedbn.GroupNormAct(groups, shape[1], activation="gelu")) for _ in range(2)]
    for i, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(a, b), f"result {i} differs between two runs"


def test_sync_batchnorm_statistics_ops(tmp_path, generator):
    """SyncBatchNormAct's own autograd (global statistics from batch_norm_stats, then the apply /
    backward_reduce / backward_elemt ops) in a one-process gloo group, against the local module."""
    import datetime

    import torch.distributed as dist
    from pyfusedbn.sync_batchnorm import SyncBatchNormActFunction

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        local = make_module(4, 6, torch.float64, generator, activation="elu", activation_param=0.5)
        weight, bias = (t.detach().clone().requires_grad_() for t in (local.weight, local.bias))
        running = [local.running_mean.clone(), local.running_var.clone()]
        x = random_input((4, 6, 3, 3), torch.float64, generator=generator)
        x_sync, x_local = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_sync = SyncBatchNormActFunction.apply(x_sync, weight, bias, None, *running, 0.1, 1e-5, "elu", 0.5,
                                                dist.group.WORLD, 1)
        y_local = local(x_local)
        dy = torch.randn(y_local.shape, generator=generator, dtype=torch.float64)
        y_sync.backward(dy)
        y_local.backward(dy)
        tol = TOLERANCE[torch.float64]
        assert_close("output", y_sync, y_local, tol)
        assert_close("grad input", x_sync.grad, x_local.grad, tol)
        assert_close("grad weight", weight.grad, local.weight.grad, tol)
        assert_close("grad bias", bias.grad, local.bias.grad, tol)
        assert_close("running_mean", running[0], local.running_mean, tol)
        assert_close("running_var", running[1], local.running_var, tol)
    finally:
        dist.destroy_process_group()


# GroupNorm's cases of the CPU suite but its two large ones (thousands of emulated blocks).
SMALL_GROUP_CASES = [c for c in GROUP_CASES if c[0] not in ("4d_long_plane", "4d_cl_large")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SMALL_GROUP_CASES, ids=[c[0] for c in SMALL_GROUP_CASES])
def test_group_norm_dtypes_and_layouts(case, dtype, generator, poison_empty):
    check_against_float64(case, dtype, "silu", generator)


# The fuzzers' examples (tests/test_fuzz.py, tests/test_group_norm_fuzz.py: shapes 1-13 per dimension,
# every activation, dtype, layout, residual, momentum, affine) on the CUDA backend, fewer of them: the
# same check bodies against their float64 composites. The device fixture above holds for all of a
# test's examples (hence the function-scoped-fixture health check is off).
EMULATED_FUZZ = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])


@EMULATED_FUZZ
@given(case=batch_norm_fuzz.cases())
def test_batch_norm_fuzz(case):
    batch_norm_fuzz.check(case, "cpu")


@EMULATED_FUZZ
@given(case=group_norm_fuzz.cases())
def test_group_norm_fuzz(case):
    group_norm_fuzz.check(case, "cpu")


@EMULATED_FUZZ
@given(case=group_norm_fuzz.instance_and_layer_cases())
def test_instance_and_layer_norm_fuzz(case):
    group_norm_fuzz.check_instance_or_layer(case, "cpu")
