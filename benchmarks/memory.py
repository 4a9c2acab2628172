"""Memory of a deep CNN training step: normal vs memory_efficient vs inplace BatchNormAct.

    python -m benchmarks.memory [--batch 32] [--channels 64] [--size 32] [--blocks 4]
                                [--cap-mb 512] [--device cpu|cuda] [--out benchmarks/results]

The network is ResNet-style: a stem conv, then blocks of conv -> BatchNormAct2d(leaky_relu) ->
conv -> BatchNormAct2d(leaky_relu, residual), then pooling, a linear head and cross-entropy.
Per mode it measures
  - saved MiB: bytes autograd keeps from forward to backward (saved_tensors_hooks, each storage
    counted once). Exact and deterministic: this is the number the memory-saving mode changes.
  - peak MiB: the training step's peak above the memory in use before it. CPU: peak RSS (VmHWM,
    reset through /proc/self/clear_refs) of a fresh subprocess per mode, with glibc's mmap
    threshold pinned so freed tensors go back to the OS; CUDA: torch.cuda.max_memory_allocated.
  - largest batch whose saved bytes fit under --cap-mb (CPU: binary search over the saved-bytes
    model, which is affine in the batch size and checked against a real forward at the answer
    and one above it; CUDA: binary search over real training steps' max_memory_allocated).
  - max |grad - grad of the normal mode| over all parameters, same weights and input.
A "torch" row (nn.BatchNorm2d + nn.LeakyReLU) gives the unfused baseline. Results: a table on
stdout and JSON in <out>/memory.json.
"""
import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import pyfusedbn
from pyfusedbn.testing import SavedTensors

from .common.markdown import MiB
from .common.results import save_json
from .models import TorchBatchNormAct2d

MODES = ("torch", "normal", "memory_efficient", "inplace")


def norm_layer(mode, channels):
    if mode == "torch":  # the unfused baseline, same call signature as BatchNormAct2d
        return TorchBatchNormAct2d(channels, "leaky_relu")
    return pyfusedbn.BatchNormAct2d(channels, activation="leaky_relu",
                                    memory_efficient=mode != "normal", inplace=mode == "inplace")


class Block(nn.Module):
    def __init__(self, mode, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = norm_layer(mode, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = norm_layer(mode, channels)

    def forward(self, x):
        return self.bn2(self.conv2(self.bn1(self.conv1(x))), x)


class Net(nn.Module):
    def __init__(self, mode, channels, blocks, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.stem_bn = norm_layer(mode, channels)
        self.blocks = nn.Sequential(*[Block(mode, channels) for _ in range(blocks)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.blocks(self.stem_bn(self.stem(x)))
        return self.head(x.mean((2, 3)))


def make_net(args, mode, device):
    torch.manual_seed(0)  # same weights in every mode
    return Net(mode, args.channels, args.blocks).to(device)


def make_batch(args, batch, device):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, args.size, args.size, generator=generator)
    target = torch.randint(0, 10, (batch,), generator=generator)
    return x.to(device), target.to(device)


def training_step(net, x, target):
    loss = F.cross_entropy(net(x), target)
    loss.backward()
    return loss


def saved_bytes(args, mode, batch, device):
    net = make_net(args, mode, device)
    x, target = make_batch(args, batch, device)
    with SavedTensors() as record:
        loss = F.cross_entropy(net(x), target)
    del loss
    return record.nbytes


def gradients(args, mode, device):
    net = make_net(args, mode, device)
    training_step(net, *make_batch(args, args.batch, device))
    return [p.grad for p in net.parameters()]


def cpu_peak_child(args):
    """In a fresh process: the step's peak RSS above the RSS just before it (MiB)."""
    net = make_net(args, args.child, "cpu")
    x, target = make_batch(args, args.batch, "cpu")
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    training_step(net, x, target)
    print(json.dumps({"peak_mib": (_rss_kib("VmHWM") - before) / 1024}))


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_peak(args, mode):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    command = [sys.executable, "-m", "benchmarks.memory", "--child", mode] + _shape_args(args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def cuda_peak(args, mode, batch):
    net = make_net(args, mode, "cuda")
    x, target = make_batch(args, batch, "cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    training_step(net, x, target)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del net, x, target
    torch.cuda.empty_cache()
    return peak / MiB


def largest_batch(fits, upper=1 << 16):
    """Largest batch >= 1 with fits(batch) (fits is monotone), 0 if none; binary search."""
    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= upper and fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def largest_batch_cpu(args, mode):
    """Saved bytes are fixed + per_sample * batch (every activation scales with the batch): fit
    them at batches 1 and 2, search the model, then check the answer with real forwards."""
    cap = args.cap_mb * MiB
    at1, at2 = saved_bytes(args, mode, 1, "cpu"), saved_bytes(args, mode, 2, "cpu")
    per_sample, fixed = at2 - at1, 2 * at1 - at2
    batch = largest_batch(lambda b: fixed + per_sample * b <= cap)
    checked = {b: saved_bytes(args, mode, b, "cpu") for b in (batch, batch + 1) if b > 0}
    assert all(v == fixed + per_sample * b for b, v in checked.items()), "saved bytes not affine"
    return batch, per_sample


def _shape_args(args):
    return ["--batch", str(args.batch), "--channels", str(args.channels), "--size",
            str(args.size), "--blocks", str(args.blocks)]


def run(args):
    device = args.device
    if device == "cuda" and not (torch.cuda.is_available() and pyfusedbn.backends()["cuda"]):
        raise SystemExit("benchmarks.memory: --device cuda needs CUDA and pyfusedbn's CUDA kernels")
    reference = gradients(args, "normal", device)
    rows = []
    for mode in MODES:
        grads = gradients(args, mode, device)
        row = {"mode": mode, "saved_mib": saved_bytes(args, mode, args.batch, device) / MiB,
               "max_abs_grad_diff_vs_normal": max((g - r).abs().max().item()
                                                  for g, r in zip(grads, reference))}
        if device == "cuda":
            row["peak_mib"] = cuda_peak(args, mode, args.batch)
            row["largest_batch"] = largest_batch(lambda b: cuda_peak(args, mode, b) <= args.cap_mb)
            row["cap_measure"] = "cuda max_memory_allocated of a training step"
        else:
            row["peak_mib"] = cpu_peak(args, mode)
            row["largest_batch"], per_sample = largest_batch_cpu(args, mode)
            row["saved_mib_per_sample"] = per_sample / MiB
            row["cap_measure"] = "saved tensor bytes"
        rows.append(row)
    normal = next(r for r in rows if r["mode"] == "normal")
    for row in rows:
        row["saved_vs_normal"] = row["saved_mib"] / normal["saved_mib"]
        row["peak_vs_normal"] = row["peak_mib"] / normal["peak_mib"]
    return rows


def table(rows, args):
    header = ("mode", "saved MiB", "vs normal", "peak MiB", "vs normal",
              f"batch <= {args.cap_mb} MiB", "max |dgrad|")
    lines = [header] + [(r["mode"], f"{r['saved_mib']:.1f}", f"{r['saved_vs_normal']:.2f}x",
                         f"{r['peak_mib']:.1f}", f"{r['peak_vs_normal']:.2f}x",
                         str(r["largest_batch"]), f"{r['max_abs_grad_diff_vs_normal']:.1e}")
                        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(line, widths))) for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--blocks", type=int, default=4, help="residual blocks (2 layers each)")
    parser.add_argument("--cap-mb", type=float, default=512,
                        help="memory cap (MiB) for the largest-batch search")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return cpu_peak_child(args)
    rows = run(args)
    config = {k: getattr(args, k) for k in ("batch", "channels", "size", "blocks", "cap_mb", "device")}
    print(f"Training step of a {2 * args.blocks + 1}-layer ResNet-style CNN, batch {args.batch}, "
          f"{args.channels} channels, {args.size}x{args.size}, leaky_relu, {args.device}")
    print(table(rows, args))
    print(f"wrote {save_json(args.out, 'memory.json', {'config': config, 'rows': rows})}")


if __name__ == "__main__":
    main()
