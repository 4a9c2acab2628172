"""The GroupNorm rows path (one position per sample: LayerNormAct2d's (N*H*W, C) rows) keeps its
scratch memory within WORKSPACE_BOUND times the input's bytes, forward and backward, as the op
reports it (pyfusedbn::group_norm_workspace_bytes: the workspace arrays, the parameter-gradient
partial sums and the CPU's per-thread row blocks) and, on a GPU, as torch's allocator measures it.
Per-(sample, channel) arrays would be one value per element: 2 (forward) and 7 (backward) of them."""
import pytest
import torch

import pyfusedbn
from pyfusedbn._ops import ops
from group_norm_cases import check_against_float64

WORKSPACE_BOUND = 2  # times the input's bytes

# (shape, dtype, memory_format): LayerNorm2d inputs, ConvNeXt's first stage (C = 96) and a narrow
# one. The CPU's row blocks are per thread (~80 KB each, counted for every thread): a few MB of
# input keeps them inside the bound on machines of up to ~50 threads, as real ConvNeXt inputs do.
ROWS_CASES = {
    "convnext_f32_nhwc": ((8, 96, 56, 56), torch.float32, torch.channels_last),
    "convnext_bf16_nhwc": ((8, 96, 56, 56), torch.bfloat16, torch.channels_last),
    "convnext_bf16_nchw": ((8, 96, 56, 56), torch.bfloat16, torch.contiguous_format),
    "narrow_f32_nhwc": ((16, 8, 64, 64), torch.float32, torch.channels_last),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def layer_norm_2d_step(shape, dtype, memory_format, device, generator, residual):
    """LayerNormAct2d forward and backward: (input bytes, forward workspace, backward workspace)."""
    x = torch.randn(shape, generator=generator).to(device, dtype).contiguous(memory_format=memory_format)
    layer = pyfusedbn.LayerNormAct2d(shape[1], activation="silu").to(device)
    x.requires_grad_()
    res = torch.randn(shape, generator=generator).to(device, dtype) if residual else None
    out = layer(x, res)
    forward = ops.group_norm_workspace_bytes()
    out.backward(torch.randn(shape, generator=generator).to(device, dtype))
    backward = ops.group_norm_workspace_bytes()
    return x.numel() * x.element_size(), forward, backward


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(ROWS_CASES))
def test_rows_workspace_within_bound(case, device, residual, generator):
    shape, dtype, memory_format = ROWS_CASES[case]
    input_bytes, forward, backward = layer_norm_2d_step(shape, dtype, memory_format, device, generator, residual)
    bound = WORKSPACE_BOUND * input_bytes
    assert 0 <= forward <= bound, f"forward workspace {forward} bytes > {bound} ({WORKSPACE_BOUND}x input)"
    assert 0 < backward <= bound, f"backward workspace {backward} bytes > {bound} ({WORKSPACE_BOUND}x input)"


def test_other_layouts_report_their_arrays(generator):
    """The counter is the ops' own: an NCHW GroupNorm reports its 2 and 7 per-(sample, channel)
    arrays (so the rows bound above measures something that can fail)."""
    x = torch.randn(4, 32, 6, 6, generator=generator, requires_grad=True)
    layer = pyfusedbn.GroupNormAct(8, 32)
    out = layer(x)
    assert ops.group_norm_workspace_bytes() == 2 * 4 * 32 * 4
    out.sum().backward()
    assert ops.group_norm_workspace_bytes() >= 7 * 4 * 32 * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rows_peak_memory_cuda(dtype, generator):
    """torch's CUDA allocator: the step's peak beyond its inputs, outputs and gradients."""
    shape = (8, 96, 56, 56)
    x = torch.randn(shape, generator=generator).to("cuda", dtype).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=generator).to("cuda", dtype).contiguous(memory_format=torch.channels_last)
    layer = pyfusedbn.LayerNormAct2d(96, activation="silu").cuda()
    x.requires_grad_()
    input_bytes = x.numel() * x.element_size()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = layer(x)
    forward_peak = torch.cuda.max_memory_allocated() - base - input_bytes  # less the output
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out.backward(dy)
    backward_peak = torch.cuda.max_memory_allocated() - base - input_bytes  # less grad_input
    bound = WORKSPACE_BOUND * input_bytes
    assert forward_peak <= bound, f"forward peak {forward_peak} bytes beyond its output > {bound}"
    assert backward_peak <= bound, f"backward peak {backward_peak} bytes beyond grad_input > {bound}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, groups", [((2100, 40), 1), ((300, 48), 4), ((5, 8), 2)], ids=["rows_g1", "rows_g4", "tiny"])
def test_rows_path_against_float64(shape, groups, device, generator):
    """The rows path with one and several groups per row, parts of the parameter-gradient sums
    (past 1024 rows) included, against the float64 reference."""
    check_against_float64(("rows", shape, torch.contiguous_format, groups), torch.float32, "silu", generator, device=device)
