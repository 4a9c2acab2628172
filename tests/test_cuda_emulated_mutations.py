"""Proof that the emulated CUDA suite (tests/test_cuda_emulated.py) can fail: each mutation below
is applied to a copy of the kernel sources (tools/cuda_emulator/build.py's variant builds; csrc
is never edited), and the suite's checks on the mutated build must then turn red: a driver run
failing (a wrong number, a guard overwritten, the emulator stopping, a crash) or two scheduling
orders giving different outputs. Only the files depending on the mutated one are recompiled."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cuda_emulated import SANITIZE, emu_build, finish, start  # noqa: E402

# (name, file relative to csrc/, original text, mutated text, driver that must fail)
MUTATIONS = [
    ("block_merge_barrier_removed", "cuda/block_merge.cuh",
     "  __syncthreads();\n  if (tid < width) {", "  if (tid < width) {", "batch_norm_kernels"),
    ("block_merge_shuffle_starts_at_8", "cuda/block_merge.cuh",
     "for (int offset = 16; offset >= width;", "for (int offset = 8; offset >= width;", "group_norm_kernels"),
    # The workspace is sized by reduction_partials: one partial slot fewer per channel.
    ("stats_workspace_one_slot_short", "cuda/batch_norm_stats.cu",
     "return reduction_parts_bound(shape, num_sms); }", "return reduction_parts_bound(shape, num_sms) - 1; }",
     "batch_norm_kernels"),
    ("param_grad_merge_loop_bounds_swapped", "cuda/group_norm_finalize.cu",
     "c < channels;\n       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {\n"
     "    const ParamGradSums sums = group_merged_param_grads(partials, parts, channels, c);",
     "c < parts;\n       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {\n"
     "    const ParamGradSums sums = group_merged_param_grads(partials, channels, parts, c);",
     "group_norm_kernels"),
]


def suite_is_red(exe):
    """What test_cuda_emulated checks, in brief: every run passes, every order agrees."""
    procs = {order: start(exe, "--order", order, "--sms", "132") for order in ("forward", "random:5")}
    digests = set()
    for order, proc in procs.items():
        finish(proc, expect_rc=None)
        lines = proc.stdout_text.strip().splitlines()
        if proc.returncode != 0 or not lines or "0 failures" not in lines[-1]:
            return f"{order}: exit {proc.returncode}: " + "".join((proc.stdout_text + proc.stderr_text)[-300:])
        digests.add(lines[-1].split("digest ")[1])
    return f"orders disagree: {digests}" if len(digests) > 1 else None


@pytest.mark.parametrize("name,path,old,new,driver", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutation_turns_the_suite_red(name, path, old, new, driver):
    exe = emu_build.build_variant(f"cuda_emulated_mutant_{name}" + ("_sanitize" if SANITIZE else ""),
                                  [(path, old, new)], drivers=[driver], sanitize=SANITIZE)[driver]
    red = suite_is_red(exe)
    assert red, f"mutation {name} ({path}) left the emulated suite green"
    print(f"{name}: {red}")
