"""GPU sharing check on a machine with NVIDIA GPUs: discovery through the real NVML, and two
fractional containers on one GPU as the node runs them (no server, no Ray: what the node does).

    python3 bench/gpu_share_check.py [--device 0] [--hold-s 5]

Needs the driver (``nvidia-smi``), ``nvidia-ml-py`` and a CUDA build of torch; imports dlapp's
pure modules from ``src`` (they need pydantic and PyYAML). Prints PASS, FAIL or SKIP for each:

1. ``dlapp.runtime.gpus.discover`` finds every GPU ``nvidia-smi`` lists, with its name, memory
   and MIG mode; the model a node is labelled with comes from the name (``H200``); on a GPU in
   MIG mode, its instances are those ``nvidia-smi -L`` lists (profiles and UUIDs);
2. ``decide`` on a node made of what discovery found puts two 0.5-GPU apps on one device and
   makes a whole-GPU app wait for a device of its own (one GPU here) or gives it another;
3. two processes started with the environment a node gives two 0.5-GPU containers of that
   device (``dlapp.contract.gpu_env``) run on it at the same time, each told its share and its
   memory (``DLAPP_GPU_FRACTION``, ``DLAPP_GPU_MEMORY_MB``); each caps itself there
   (``torch.cuda.set_per_process_memory_fraction``, the enforcement without MPS), holds 80% of
   its share at once with the other, and is refused when it asks for more than its share;
4. where an MPS control daemon can be started, a container's share is enforced by MPS
   (``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``): more than its memory fails, less succeeds.

Exit status: 0 when no check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dlapp.contract import gpu_env
from dlapp.runtime.gpus import discover
from dlapp.scheduler import Admit, AppHead, NodeView, Resources, Snapshot, Wait, decide

failures: list[str] = []

CHILD = """
import json, os, sys, time
import torch
share = float(os.environ["DLAPP_GPU_FRACTION"])
memory_mb = int(os.environ["DLAPP_GPU_MEMORY_MB"])
cap = os.environ.get("DLAPP_GPU_MEMORY_LIMIT") == "none"
if cap:
    torch.cuda.set_per_process_memory_fraction(share, 0)
out = {"visible": os.environ["CUDA_VISIBLE_DEVICES"], "share": share, "memory_mb": memory_mb,
       "device": torch.cuda.get_device_name(0)}
if sys.argv[2] == "hold":  # 80% of its share, for a while
    held = torch.empty(int(memory_mb * 0.8) * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
    out["held_from"] = time.time()
    time.sleep(float(sys.argv[1]))
    out["held_until"] = time.time()
else:  # 110% of its share, alone on the GPU: only a cap refuses it
    try:
        more = torch.empty(int(memory_mb * 1.1) * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
        out["over_share"] = "allowed"
    except torch.OutOfMemoryError:
        out["over_share"] = "refused"
print(json.dumps(out), flush=True)
"""


def check(name: str, ok: bool | None, detail: str = "") -> None:
    word = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    print(f"{word}  {name}" + (f": {detail}" if detail else ""), flush=True)
    if ok is False:
        failures.append(name)


def smi(*args: str) -> str:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, check=True).stdout


def check_discovery() -> list:  # type: ignore[type-arg]
    devices = discover()
    rows = [
        r.split(", ")
        for r in smi(
            "--query-gpu=index,name,memory.total,uuid,mig.mode.current",
            "--format=csv,noheader,nounits",
        )
        .strip()
        .splitlines()
    ]
    ok = len(devices) == len(rows) > 0 and all(
        d.name == r[1]
        and d.memory_mb == int(r[2])
        and d.uuid == r[3]
        and d.mig_mode == (r[4].strip() == "Enabled")
        for d, r in zip(devices, rows, strict=False)
    )
    seen = [(d.index, d.name, d.model, d.memory_mb, d.mig_mode) for d in devices]
    check("1. discovery: every GPU, its name, memory and MIG mode", ok, f"{seen} vs {rows}")
    listed = [ln.strip() for ln in smi("-L").splitlines() if ln.strip().startswith("MIG ")]
    found = [m for d in devices for m in d.mig]
    if not any(d.mig_mode for d in devices):
        check("1. MIG instances as nvidia-smi lists them", None, "no GPU here is in MIG mode")
    else:
        ok = len(found) == len(listed) and all(
            any(m.uuid in ln and m.profile in ln for ln in listed) for m in found
        )
        check("1. MIG instances as nvidia-smi lists them", ok, f"{found} vs {listed}")
    return devices


def check_decide(devices: list) -> None:  # type: ignore[type-arg]
    whole = [d for d in devices if not d.mig_mode]
    if not whole:
        check("2. decide shares a device between halves", None, "every GPU is in MIG mode")
        return
    node = NodeView(
        "n",
        "n",
        Resources(16, 64 * 1024, len(whole)),
        Resources(16, 64 * 1024, len(whole)),
        model=whole[0].model,
    )
    heads = [AppHead(f"half{i}", "u", "default", i, Resources(1, 1024, 0.5)) for i in (1, 2)]
    heads.append(
        AppHead("whole", "u", "default", 3, Resources(1, 1024, 1), gpu_types=(whole[0].model,))
    )
    d1, d2, d3 = decide(heads, Snapshot((node,)))
    halves_shared = isinstance(d1, Admit) and isinstance(d2, Admit) and d1.devices == d2.devices
    whole_apart = (isinstance(d3, Wait) and len(whole) == 1) or (
        isinstance(d3, Admit)
        and isinstance(d1, Admit)
        and set(d3.devices[0]).isdisjoint(d1.devices[0])
    )
    check(
        "2. decide: halves share a device, a whole GPU is never shared",
        halves_shared and whole_apart,
        f"{d1}; {d2}; {d3}",
    )


def run_pair(
    device: str,
    memory_mb: int,
    hold_s: float,
    mps: bool,
    phase: str = "hold",
    n: int = 2,
    env_over: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    env = {**os.environ, **gpu_env([device], 0.5, memory_mb // 2, mps), **(env_over or {})}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(hold_s), phase],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        if p.returncode != 0:
            print(f"      child failed ({p.returncode}): {stderr.strip()[-800:]}")
            continue
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def check_pair(devices: list, index: int, hold_s: float) -> None:  # type: ignore[type-arg]
    whole = [d for d in devices if not d.mig_mode and d.index == index]
    if not whole:
        check("3. two halves on one GPU", None, f"GPU {index} is not a whole GPU here")
        return
    gpu = whole[0]
    got = run_pair(str(gpu.index), gpu.memory_mb, hold_s, mps=False)
    together = len(got) == 2 and max(g["held_from"] for g in got) < min(
        g["held_until"] for g in got
    )
    told = all(g["share"] == 0.5 and g["memory_mb"] == gpu.memory_mb // 2 for g in got)
    same = len({g["visible"] for g in got}) == 1
    check(
        "3. two 0.5-GPU containers hold their shares of one GPU at once",
        len(got) == 2 and together and told and same,
        json.dumps(got),
    )
    capped = run_pair(str(gpu.index), gpu.memory_mb, 0, mps=False, phase="over", n=1)
    free = run_pair(
        str(gpu.index),
        gpu.memory_mb,
        0,
        mps=False,
        phase="over",
        n=1,
        env_over={"DLAPP_GPU_MEMORY_LIMIT": "off-for-the-control"},
    )
    check(
        "3. more memory than its share is refused (per-process cap); without the cap, not",
        [g["over_share"] for g in capped + free] == ["refused", "allowed"],
        str([g["over_share"] for g in capped + free]),
    )


def check_mps(devices: list, index: int, hold_s: float) -> None:  # type: ignore[type-arg]
    control = shutil.which("nvidia-cuda-mps-control")
    gpu = next((d for d in devices if d.index == index and not d.mig_mode), None)
    if control is None or gpu is None:
        check("4. MPS enforces a container's memory", None, "no nvidia-cuda-mps-control here")
        return
    pipes = Path(tempfile.mkdtemp(prefix="mps-pipe-"))
    logs = Path(tempfile.mkdtemp(prefix="mps-log-"))
    mps_env = {
        **os.environ,
        "CUDA_MPS_PIPE_DIRECTORY": str(pipes),
        "CUDA_MPS_LOG_DIRECTORY": str(logs),
    }
    started = subprocess.run([control, "-d"], env=mps_env, capture_output=True, text=True)
    time.sleep(1)
    if started.returncode != 0 or not (pipes / "control").exists():
        check(
            "4. MPS enforces a container's memory",
            None,
            f"the MPS daemon did not start: {started.stderr.strip()[:200]}",
        )
        return
    try:
        os.environ.update(
            {k: mps_env[k] for k in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")}
        )
        got = run_pair(str(gpu.index), gpu.memory_mb, 0, mps=True, phase="over", n=1)
        check(
            "4. MPS enforces a container's memory (no per-process cap: MPS refuses it)",
            [g["over_share"] for g in got] == ["refused"],
            json.dumps(got),
        )
    finally:
        subprocess.run([control], input="quit\n", env=mps_env, text=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--hold-s", type=float, default=5.0)
    parser.add_argument("--no-mps", action="store_true", help="leave MPS out")
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("no nvidia-smi here: run this on a machine with NVIDIA GPUs and their driver")
        return 2
    devices = check_discovery()
    check_decide(devices)
    check_pair(devices, args.device, args.hold_s)
    if not args.no_mps:
        check_mps(devices, args.device, args.hold_s)
    print("all checks passed" if not failures else f"FAILED: {', '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
