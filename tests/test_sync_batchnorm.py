"""SyncBatchNormAct across 2 and 3 gloo processes on CPU against one process on the global batch.

Each world is spawned once; its workers run every case of CASES (two training steps, then eval)
and save what they saw; the parent compares each rank's slice with a single-process BatchNormAct
run on the concatenated batch (float64), so assertion messages name the rank, step and tensor.
"""
import datetime
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from helpers import TOLERANCE, assert_close, random_input

import pyfusedbn
from pyfusedbn import sync_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
from clean_exit import exit_after_clean_finish  # noqa: E402  (examples/ is not a package)

TOL = TOLERANCE[torch.float64]
JOIN_TIMEOUT_S = 120

# (name, per-sample shape (C, ...), activation, activation_param, residual, momentum, affine,
#  memory format)
CASES = [
    ("relu_4d", (3, 4, 5), "relu", None, False, 0.1, True, torch.contiguous_format),
    ("relu_4d_residual", (3, 4, 5), "relu", None, True, 0.1, True, torch.contiguous_format),
    ("silu_4d_channels_last_residual", (4, 3, 3), "silu", None, True, 0.1, True,
     torch.channels_last),
    ("silu_2d_cumulative", (5,), "silu", None, False, None, True, torch.contiguous_format),
    ("elu_3d_residual", (3, 6), "elu", 0.7, True, 0.3, True, torch.contiguous_format),
    ("elu_5d_no_affine", (2, 2, 3, 2), "elu", None, False, 0.1, False, torch.contiguous_format),
]

# world size -> per-rank batch sizes: uneven, and a rank with no samples.
WORLDS = {2: (4, 2), 3: (3, 1, 0)}
STEPS = 2


def _case_data(case_index, batch_sizes):
    """Global batches for STEPS training steps and one eval step, their output gradients and
    residuals, and the initial parameters: the same in every process."""
    _, shape, _, _, residual, _, _, memory_format = CASES[case_index]
    g = torch.Generator().manual_seed(1000 + case_index)
    n = sum(batch_sizes)
    full = (n,) + shape
    fmt = memory_format if len(full) == 4 else torch.contiguous_format

    def batch():
        return random_input(full, torch.float64, fmt, generator=g)

    return {
        "x": [batch() for _ in range(STEPS + 1)],
        "grad": [torch.randn(full, dtype=torch.float64, generator=g) for _ in range(STEPS)],
        "residual": [batch() if residual else None for _ in range(STEPS + 1)],
        "weight": torch.rand(shape[0], dtype=torch.float64, generator=g) + 0.5,
        "bias": torch.randn(shape[0], dtype=torch.float64, generator=g),
    }


def _rows(batch_sizes, rank):
    start = sum(batch_sizes[:rank])
    return slice(start, start + batch_sizes[rank])


def _make(module_cls, case, data):
    _, shape, activation, param, _, momentum, affine, _ = case
    module = module_cls(shape[0], momentum=momentum, affine=affine, activation=activation,
                        activation_param=param).double()
    if affine:
        with torch.no_grad():
            module.weight.copy_(data["weight"])
            module.bias.copy_(data["bias"])
    return module


def _leaf(t, rows):
    return None if t is None else t[rows].clone().requires_grad_()


class _NoCollectives:
    """Makes any collective raise: eval mode must not communicate."""
    GATHERS = ("all_gather", "all_gather_single", "all_gather_into_tensor")
    NAMES = tuple(name for name in GATHERS if hasattr(dist, name)) + ("all_reduce",)

    def __enter__(self):
        self.saved = {name: getattr(dist, name) for name in self.NAMES}
        for name in self.NAMES:
            setattr(dist, name, self._wrap(name, self.saved[name]))
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(dist, name, fn)

    def _wrap(self, name, collective):
        return self._fail

    @staticmethod
    def _fail(*args, **kwargs):
        raise AssertionError("a collective ran in eval mode")


class _CountCollectives(_NoCollectives):
    """Counts the collectives that run (and runs them)."""

    def __enter__(self):
        self.counts = dict.fromkeys(self.NAMES, 0)
        return super().__enter__()

    def _wrap(self, name, collective):
        def counted(*args, **kwargs):
            self.counts[name] += 1
            return collective(*args, **kwargs)
        return counted


def _worker(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        batch_sizes = WORLDS[world_size]
        rows = _rows(batch_sizes, rank)
        results = []
        for index, case in enumerate(CASES):
            data = _case_data(index, batch_sizes)
            module = _make(pyfusedbn.SyncBatchNormAct, case, data)
            steps = []
            for step in range(STEPS):
                x, r = _leaf(data["x"][step], rows), _leaf(data["residual"][step], rows)
                with _CountCollectives() as collectives:
                    out = module(x, r)
                    out.backward(data["grad"][step][rows])
                steps.append({
                    "collectives": collectives.counts,
                    "out": out.detach(), "grad_input": x.grad,
                    "grad_residual": None if r is None else r.grad,
                    "grad_weight": None if module.weight is None else module.weight.grad.clone(),
                    "grad_bias": None if module.bias is None else module.bias.grad.clone(),
                    "running_mean": module.running_mean.clone(),
                    "running_var": module.running_var.clone(),
                    "num_batches_tracked": module.num_batches_tracked.clone(),
                })
                module.zero_grad()
            module.eval()
            with _NoCollectives(), torch.no_grad():
                r = data["residual"][STEPS]
                eval_out = module(data["x"][STEPS][rows], None if r is None else r[rows])
            results.append({"steps": steps, "eval_out": eval_out})
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        dist.destroy_process_group()
        raise
    exit_after_clean_finish()  # its results are saved: leave without gloo's teardown race


def _spawn(world_size, tmp_path):
    """Runs _worker on world_size processes; fails (never hangs) past JOIN_TIMEOUT_S."""
    context = mp.start_processes(_worker, args=(world_size, str(tmp_path / "store"), str(tmp_path)),
                                 nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{world_size} workers still running after {JOIN_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world_size)]


def _reference_class(dim):
    return {2: pyfusedbn.BatchNormAct1d, 3: pyfusedbn.BatchNormAct1d,
            4: pyfusedbn.BatchNormAct2d, 5: pyfusedbn.BatchNormAct3d}[dim]


def _check_case(index, batch_sizes, per_rank):
    """per_rank: each rank's results for case `index`; compared with one process on all rows."""
    case = CASES[index]
    data = _case_data(index, batch_sizes)
    module = _make(_reference_class(data["x"][0].dim()), case, data)
    params = [p for p in (module.weight, module.bias) if p is not None]
    for step in range(STEPS):
        x, r = _leaf(data["x"][step], slice(None)), _leaf(data["residual"][step], slice(None))
        out = module(x, r)
        grad = data["grad"][step]
        leaves = [x] + ([r] if r is not None else [])
        grads = torch.autograd.grad(out, leaves, grad, retain_graph=True)
        for rank, results in enumerate(per_rank):
            rows = _rows(batch_sizes, rank)
            got = results["steps"][step]
            where = f"{case[0]} world {len(batch_sizes)} rank {rank} step {step}"
            counts = got["collectives"]
            gathers = sum(counts.get(name, 0) for name in _NoCollectives.GATHERS)
            assert (gathers, counts["all_reduce"]) == (1, 1), (
                f"{where}: expected one all-gather and one all-reduce, got {got['collectives']}")
            assert_close(f"{where} out", got["out"], out[rows], TOL)
            assert_close(f"{where} grad_input", got["grad_input"], grads[0][rows], TOL)
            if r is not None:
                assert_close(f"{where} grad_residual", got["grad_residual"], grads[1][rows], TOL)
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                assert_close(f"{where} {name}", got[name], getattr(module, name), TOL)
            if params:
                # This rank's own contribution (nn.SyncBatchNorm's, DDP sums/averages them):
                # the gradient of the loss restricted to its rows.
                mask = torch.zeros_like(grad)
                mask[rows] = 1
                local = torch.autograd.grad(out, params, grad * mask, retain_graph=True)
                assert_close(f"{where} grad_weight", got["grad_weight"], local[0], TOL)
                assert_close(f"{where} grad_bias", got["grad_bias"], local[1], TOL)
    module.eval()
    with torch.no_grad():
        r = data["residual"][STEPS]
        eval_out = module(data["x"][STEPS], r)
    for rank, results in enumerate(per_rank):
        assert_close(f"{case[0]} world {len(batch_sizes)} rank {rank} eval out",
                     results["eval_out"], eval_out[_rows(batch_sizes, rank)], TOL)


@pytest.mark.parametrize("world_size", sorted(WORLDS))
def test_matches_single_process_on_global_batch(world_size, tmp_path):
    per_rank = _spawn(world_size, tmp_path)
    for index in range(len(CASES)):
        _check_case(index, WORLDS[world_size], [results[index] for results in per_rank])


def _compare_with_local(sync, local, x, residual=None):
    for step in range(2):
        outs, grads = [], []
        for module in (sync, local):
            xi = x.clone().requires_grad_()
            ri = None if residual is None else residual.clone().requires_grad_()
            out = module(xi, ri)
            out.sum().backward()
            outs.append(out)
            grads.append(xi.grad)
        assert_close(f"step {step} out", outs[0], outs[1], TOL)
        assert_close(f"step {step} grad_input", grads[0], grads[1], TOL)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert_close(f"step {step} {name}", getattr(sync, name), getattr(local, name), TOL)
        assert_close(f"step {step} grad_weight", sync.weight.grad, local.weight.grad, TOL)
    sync.eval(), local.eval()
    assert_close("eval out", sync(x, residual), local(x, residual), TOL)


def _fallback_pair():
    sync = pyfusedbn.SyncBatchNormAct(3, activation="elu", activation_param=0.5).double()
    local = pyfusedbn.BatchNormAct2d(3, activation="elu", activation_param=0.5).double()
    x = random_input((4, 3, 2, 3), torch.float64, generator=torch.Generator().manual_seed(0))
    return sync, local, x


def test_not_distributed_falls_back_to_local_op(monkeypatch):
    assert not dist.is_initialized()
    for name in _NoCollectives.NAMES:
        monkeypatch.setattr(dist, name, _NoCollectives._fail)
    sync, local, x = _fallback_pair()
    _compare_with_local(sync, local, x, residual=torch.randn_like(x))


def test_world_size_one_falls_back_to_local_op(monkeypatch, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1, timeout=datetime.timedelta(seconds=60))
    try:
        for name in _NoCollectives.NAMES:
            monkeypatch.setattr(dist, name, _NoCollectives._fail)
        sync, local, x = _fallback_pair()
        _compare_with_local(sync, local, x)
    finally:
        dist.destroy_process_group()


def test_input_dims():
    module = pyfusedbn.SyncBatchNormAct(3)
    for shape in ((4, 3), (4, 3, 2), (4, 3, 2, 2), (4, 3, 2, 2, 2), (2, 3, 2, 2, 2, 2)):
        assert module(torch.randn(shape)).shape == shape
    with pytest.raises(ValueError, match="expected at least 2D input"):
        module(torch.randn(3))


def test_convert_sync_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, momentum=None),
        nn.Sequential(pyfusedbn.BatchNormAct2d(4, eps=1e-3, activation="elu", activation_param=0.5),
                      nn.BatchNorm2d(4, affine=False, track_running_stats=False)),
        nn.BatchNorm2d(4),
    )
    model[3].eval()
    model[2][0].weight.requires_grad_(False)
    model(torch.randn(4, 3, 5, 5))  # non-trivial running statistics
    originals = [model[1], model[2][0], model[2][1], model[3]]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 5, 5)
    model.eval()
    expected = model(x)
    model[1].train()
    group = object()  # stored as given; only used when distributed
    converted = pyfusedbn.convert_sync_batchnorm(model, process_group=group)
    assert converted is model
    layers = [converted[1], converted[2][0], converted[2][1], converted[3]]
    for original, layer, activation in zip(originals, layers, ("identity", "elu", "identity",
                                                               "identity")):
        assert type(layer) is pyfusedbn.SyncBatchNormAct
        assert layer.activation == activation and layer.process_group is group
        for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats",
                     "training"):
            assert getattr(layer, attr) == getattr(original, attr), attr
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert getattr(layer, name) is getattr(original, name), name
    assert converted[2][0].activation_param == 0.5
    assert not converted[2][0].weight.requires_grad and converted[2][0].bias.requires_grad
    assert state.keys() == converted.state_dict().keys()
    for key, value in converted.state_dict().items():
        assert torch.equal(value, state[key]), key
    converted.eval()
    assert_close("converted eval out", converted(x), expected, 1e-6)
    single = pyfusedbn.convert_sync_batchnorm(nn.BatchNorm1d(2))
    assert type(single) is pyfusedbn.SyncBatchNormAct and single.activation == "identity"


def test_ddp_example_trains():
    """examples/ddp_train.py under torchrun with 2 gloo processes (--standalone: a free port)."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(ROOT, "examples", "ddp_train.py"), "--steps", "4"],
        capture_output=True, text=True, timeout=JOIN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 SyncBatchNormAct layers" in result.stdout, result.stdout
    assert "step    4  loss" in result.stdout, result.stdout
    assert "running statistics identical on all ranks: True" in result.stdout, result.stdout
