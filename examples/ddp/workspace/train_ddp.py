"""Data-parallel training across dlapp containers with torch.distributed (DDP).

dlapp gives each container MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and LOCAL_RANK; this
script joins the group with ``init_process_group(init_method="env://")``: NCCL when a GPU is
visible, gloo on CPUs. Each rank trains a small CNN on its shard of scikit-learn's digits; DDP
averages the gradients, so every rank ends with the same model. Rank 0 writes metrics.json.

Each container sees only its own GPUs, numbered from 0: it trains on ``cuda:0``
(``container_device``), never ``cuda:LOCAL_RANK``, which names a GPU it cannot see as soon as
two containers share a node.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def container_device() -> torch.device:
    """The device this container trains on: its first GPU, else the CPU. dlapp shows each
    container only the GPUs it was given (CUDA_VISIBLE_DEVICES), which CUDA numbers from 0
    inside, so that GPU is ``cuda:0`` whatever LOCAL_RANK says: LOCAL_RANK counts the app's
    containers on the same node, and the second one there (LOCAL_RANK=1) still sees one GPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(container_device())  # NCCL's device, before the group forms
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = container_device()
    print(
        f"rank {rank}/{world} backend={backend} device={device} "
        f"LOCAL_RANK={os.environ.get('LOCAL_RANK')} "
        f"master={os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}",
        flush=True,
    )

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    order = np.random.default_rng(0).permutation(len(y))
    test_idx, train_idx = order[:360], order[360:]
    shard = train_idx[rank::world]  # this rank's part of the training set
    xs, ys = x[shard].to(device), y[shard].to(device)

    torch.manual_seed(0)
    model = DistributedDataParallel(SmallCNN().to(device))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(ys), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(ys), args.batch_size):
            idx = perm[i : i + args.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
        print(f"rank {rank} epoch {epoch + 1}/{args.epochs} loss={loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        pred = model(x[test_idx].to(device)).argmax(1).cpu()
    accuracy = float((pred == y[test_idx]).float().mean())
    # every rank holds the same weights: check it by comparing a checksum across ranks
    checksum = torch.tensor(
        [sum(float(p.detach().sum()) for p in model.parameters())], device=device
    )
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    in_sync = all(abs(float(g) - float(checksum)) < 1e-3 for g in gathered)
    out = Path("output")
    out.mkdir(exist_ok=True)
    result = {
        "rank": rank,
        "world_size": world,
        "backend": backend,
        "accuracy": accuracy,
        "weights_in_sync": in_sync,
        "train_seconds": round(time.time() - t0, 2),
    }
    (out / "metrics.json").write_text(json.dumps(result))
    print(f"rank {rank} accuracy={accuracy:.4f} weights_in_sync={in_sync}", flush=True)
    # every rank reaches here before any leaves: a rank that exits while another is still in
    # a collective makes gloo abort that other one ("terminate called ...")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
