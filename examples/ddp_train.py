"""Trains a small conv net with synchronised fused BatchNorm under DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/ddp_train.py --steps 20            # gloo, CPU
    torchrun --nproc_per_node=2 examples/ddp_train.py --backend nccl        # one GPU per rank

Data are synthetic (a fixed random "teacher" labels random images); each rank cycles through its
own small batches, and SyncBatchNormAct normalises with the statistics of the global batch.
"""
import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import pyfusedbn
from clean_exit import exit_after_clean_finish


class Block(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN (+ x) -> ReLU, the second BN fused with the residual."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = pyfusedbn.BatchNormAct2d(width, activation="relu")
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = pyfusedbn.BatchNormAct2d(width, activation="relu")

    def forward(self, x):
        return self.bn2(self.conv2(self.bn1(self.conv1(x))), residual=x)


def make_model(width=16, classes=10):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),  # plain torch BatchNorm: converted too (activation "identity")
        nn.SiLU(),
        Block(width),
        Block(width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="per rank")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--print-every", type=int, default=2)
    args = parser.parse_args()

    dist.init_process_group(args.backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)

    torch.manual_seed(0)  # the same initial model on every rank (DDP also broadcasts it)
    model = pyfusedbn.convert_sync_batchnorm(make_model()).to(device)
    teacher = nn.Sequential(nn.Conv2d(3, 10, 16), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten()).to(device)
    model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    if rank == 0:
        syncs = sum(isinstance(m, pyfusedbn.SyncBatchNormAct) for m in model.modules())
        print(f"world size {world_size}, backend {args.backend}, {syncs} SyncBatchNormAct layers")

    # Each rank its own fixed set of samples, cycled through in batches: a loss that can fall.
    data = torch.Generator(device="cpu").manual_seed(1 + rank)
    batches = [torch.randn(args.batch_size, 3, 16, 16, generator=data).to(device)
               for _ in range(4)]
    for step in range(1, args.steps + 1):
        images = batches[step % len(batches)]
        with torch.no_grad():
            labels = teacher(images).argmax(1)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.print_every == 0 or step == args.steps:
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            if rank == 0:
                print(f"step {step:4d}  loss {mean_loss.item() / world_size:.4f}")

    # Every rank holds the same running statistics: they were computed on the global batch.
    bn = model.module[1]
    gathered = [torch.empty_like(bn.running_mean) for _ in range(world_size)]
    dist.all_gather(gathered, bn.running_mean)
    same = all(torch.equal(gathered[0], g) for g in gathered)
    if rank == 0:
        print(f"running statistics identical on all ranks: {same}")
    if not same:
        raise RuntimeError("running statistics differ between ranks")


if __name__ == "__main__":
    main()
    exit_after_clean_finish()  # only reached when training finished and was checked
