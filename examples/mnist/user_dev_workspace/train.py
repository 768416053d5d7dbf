"""Train a LeNet-style CNN on the 8x8 digits (the example's "LeNet on MNIST").

Reads prepared/digits_{train,test}.npz (made by create_mnist.sh) and writes into
output/ (the app's output binding):
  model.pt       state_dict of the trained model
  metrics.json   {"accuracy", "epochs", "device", "train_samples", "test_samples",
                  "container_index", ...}
The last line printed is ``accuracy=0.XXXX``.

On SIGTERM (e.g. ``dlapp kill``/soft kill, or max_runtime) it stops at the next
batch, saves output/checkpoint.pt, prints "SIGTERM received: checkpoint saved"
and exits with status 143.
"""

import argparse
import json
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PREPARED = "prepared"
OUTPUT = "output"


class LeNet(nn.Module):
    """conv-pool-conv-pool-fc-fc, with 3x3 padded convs for 8x8 inputs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)  # 32 x 8 x 8
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)  # 64 x 4 x 4
        self.fc1 = nn.Linear(64 * 2 * 2, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # -> 32 x 4 x 4
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # -> 64 x 2 x 2
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


_sigterm = False


def _on_sigterm(signum, frame):
    global _sigterm
    _sigterm = True


def load_split(name: str, device: torch.device):
    path = os.path.join(PREPARED, f"digits_{name}.npz")
    if not os.path.isfile(path):
        print(f"ERROR: {path} not found; run ./create_mnist.sh first", file=sys.stderr, flush=True)
        sys.exit(2)
    with np.load(path) as d:
        x = torch.from_numpy(d["x"].astype(np.float32) / 16.0).unsqueeze(1)
        y = torch.from_numpy(d["y"].astype(np.int64))
    return x.to(device), y.to(device)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = model(x).argmax(dim=1)
    return (pred == y).float().mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description="Train LeNet on the 8x8 digits")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, _on_sigterm)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    container_index = int(os.environ.get("CONTAINER_INDEX", 0))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    num_containers = os.environ.get("NUM_CONTAINERS", "<unset>")
    print(
        f"device={device.type} ({device_name}) CUDA_VISIBLE_DEVICES={visible} "
        f"CONTAINER_INDEX={container_index} NUM_CONTAINERS={num_containers} "
        f"torch={torch.__version__}",
        flush=True,
    )

    x_train, y_train = load_split("train", device)
    x_test, y_test = load_split("test", device)
    print(f"train_samples={len(y_train)} test_samples={len(y_test)}", flush=True)

    model = LeNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs))
    gen = torch.Generator().manual_seed(args.seed)
    os.makedirs(OUTPUT, exist_ok=True)

    def save_checkpoint(epoch: int) -> None:
        torch.save(
            {
                "epoch": epoch,
                "model_state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "optimizer_state_dict": optimizer.state_dict(),
                "args": vars(args),
            },
            os.path.join(OUTPUT, "checkpoint.pt"),
        )

    def stop_if_terminated(epoch: int) -> None:
        if _sigterm:
            save_checkpoint(epoch)
            print("SIGTERM received: checkpoint saved", flush=True)
            sys.exit(143)

    accuracy = evaluate(model, x_test, y_test)
    start = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        stop_if_terminated(epoch - 1)
        model.train()
        t0 = time.monotonic()
        perm = torch.randperm(len(y_train), generator=gen).to(device)
        total_loss = 0.0
        for i in range(0, len(perm), args.batch_size):
            stop_if_terminated(epoch - 1)
            idx = perm[i : i + args.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
        scheduler.step()
        accuracy = evaluate(model, x_test, y_test)
        print(
            f"epoch {epoch}/{args.epochs} loss={total_loss / len(perm):.4f} "
            f"test_acc={accuracy:.4f} time={time.monotonic() - t0:.2f}s",
            flush=True,
        )
    stop_if_terminated(args.epochs)

    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(OUTPUT, "model.pt"))
    metrics = {
        "accuracy": accuracy,
        "epochs": args.epochs,
        "device": device.type,
        "train_samples": len(y_train),
        "test_samples": len(y_test),
        "container_index": container_index,
        "seed": args.seed,
        "train_seconds": round(time.monotonic() - start, 3),
    }
    with open(os.path.join(OUTPUT, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(f"wrote {OUTPUT}/model.pt and {OUTPUT}/metrics.json", flush=True)
    print(f"accuracy={accuracy:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
