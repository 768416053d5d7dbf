"""GPU check: the real NVML path, on a machine with NVIDIA GPUs (there is none in CI).

    .venv/bin/python bench/gpu_check.py [--gpus-per-app 1] [--busy-s 30] [--keep]

Needs the NVIDIA driver (``nvidia-smi``), ``nvidia-ml-py`` (a dlapp dependency) and a CUDA
build of torch in this Python (``pip install torch``). It starts an embedded dlapp server in a
temporary home with the default ``gpu_sampler: nvml`` and short sampling periods, launches one
app (``runtime: process``) that runs a torch matmul loop on its GPUs for ``--busy-s`` and then
sleeps, and checks, printing PASS or FAIL for each:

1. NVML on this host sees every GPU ``nvidia-smi -L`` lists;
2. the devices the app sees (``CUDA_VISIBLE_DEVICES``, printed by the app) are the GPU ids the
   server assigned to its container;
3. while the loop runs, the app's stored utilisation of each of its GPUs goes above 0, and the
   readings are of its own GPUs only;
4. ``/metrics`` shows ``dlapp_gpu_utilisation_percent`` for those GPUs;
5. once the loop ends, the app is flagged for idle GPUs (``gpu_idle_after_s``: 10 s here);
6. ``dlapp usage`` (``/api/v1/usage``) reports GPU-hours used above 0 after the app is killed.

Exit status: 0 when every check passed. ``--keep`` leaves the home (server log, store) behind.

GPU sharing (discovery, two fractional containers on one GPU, their memory caps, MPS) has a
check of its own that needs no server: ``bench/gpu_share_check.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dlapp import embedded
from dlapp.client import DlappClient
from dlapp.credentials import ADMIN_TOKEN_FILE
from dlapp.data.workspace import pack_workspace
from dlapp.node.gpu_usage import NvmlSampler
from dlapp.spec import AppSpec

APP = """\
import os, sys, time
import torch
visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
print("CUDA_VISIBLE_DEVICES=" + visible, flush=True)
n = torch.cuda.device_count()
print(f"torch sees {n} device(s)", flush=True)
xs = [torch.randn(8192, 8192, device=f"cuda:{i}") for i in range(n)]
end = time.time() + {busy_s}
while time.time() < end:
    for x in xs:
        x @ x
    torch.cuda.synchronize()
print("busy loop done; idling", flush=True)
time.sleep(600)
"""

failures: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        failures.append(name)


def until(what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.5)
    print(f"      (gave up waiting for {what} after {timeout_s:g}s)")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus-per-app", type=int, default=1)
    parser.add_argument("--busy-s", type=float, default=30.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()

    if shutil.which("nvidia-smi") is None:
        print("no nvidia-smi here: run this on a machine with NVIDIA GPUs and their driver")
        return 2
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True)
    devices = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    sampler = NvmlSampler()
    samples = sampler.sample()
    sampler.close()
    found = f"{len(samples)} of {len(devices)}"
    check("1. NVML sees every GPU", len(samples) == len(devices) > 0, found)

    home = Path(tempfile.mkdtemp(prefix="dlapp-gpu-check-"))
    (home / "server.yaml").write_text(
        "gpu_sample_interval_s: 1\ngpu_idle_after_s: 10\ntimeseries_interval_s: 5\n"
    )
    info, _ = embedded.up(home)
    token = (home / ADMIN_TOKEN_FILE).read_text().strip()
    ws = home / "ws"
    ws.mkdir()
    (ws / "busy.py").write_text(APP.replace("{busy_s}", repr(args.busy_s)))
    (ws / "run.sh").write_text(f"exec {sys.executable} busy.py\n")
    spec = AppSpec.from_dict(
        {
            "name": "gpu-check",
            "entry": {"script": "run.sh"},
            "resources": {"cpus": 1, "memory": "4G", "gpus": args.gpus_per_app},
            # CUDA's own order (fastest first) may differ from NVML's on mixed machines
            "env": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        }
    )
    try:
        with DlappClient(info.url, token) as client:
            app_id = client.submit(spec, pack_workspace(ws, home / "ws.tar.gz").path)["id"]
            print(f"      app {app_id}; server log {home / 'server.log'}")
            return run_checks(client, info.url, token, app_id)
    finally:
        embedded.down(home)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


def run_checks(client: DlappClient, url: str, token: str, app_id: str) -> int:
    def running() -> dict[str, Any] | None:
        app = client.get(app_id)
        ok = app["state"] == "RUNNING" and all(c["gpu_ids"] for c in app["containers"])
        return app if ok else None

    app = until("the app to run", running, 180)
    if app is None:
        check("the app runs", False, json.dumps(client.get(app_id))[:500])
        return 1
    assigned = app["containers"][0]["gpu_ids"]
    log = until(
        "the app's device line",
        lambda: (t := client.logs(app_id)) and "torch sees" in t and t,
        120,
    )
    seen = next(
        (line.split("=", 1)[1] for line in (log or "").splitlines() if "CUDA_VISIBLE" in line), ""
    )
    check("2. the app sees its assigned GPUs", seen.split(",") == assigned, f"{seen} vs {assigned}")

    peak: dict[str, float] = {}

    def busy() -> bool:
        usage = client.get(app_id)["gpu_usage"] or {"containers": []}
        for c in usage["containers"]:
            for gpu, reading in c["gpus"].items():
                peak[gpu] = max(peak.get(gpu, 0.0), reading["utilisation"])
        return bool(peak) and all(peak.get(g, 0) > 0 for g in assigned)

    until("utilisation above 0", busy, 60)
    check(
        "3. utilisation > 0 on its own GPUs only",
        all(peak.get(g, 0) > 0 for g in assigned) and set(peak) == set(assigned),
        f"peak {peak}",
    )
    metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    shown = [line for line in metrics.splitlines() if line.startswith("dlapp_gpu_utilisation")]
    check(
        "4. /metrics shows the GPUs' utilisation",
        all(any(f'gpu="{g}"' in line for line in shown) for g in assigned),
        "; ".join(shown),
    )
    idle = until("the idle flag", lambda: (client.get(app_id)["gpu_usage"] or {}).get("idle"), 120)
    events = [e["reason"] for e in client.events(app_id) if e["kind"] == "gpu-idle"]
    check("5. flagged for idle GPUs after the loop", bool(idle), "; ".join(events))
    client.kill(app_id)
    client.wait(app_id, timeout_s=60)
    report = until(
        "the usage report",
        lambda: (r := client.usage(by="queue"))["rows"] and r["rows"][0]["gpu_hours_used"] and r,
        30,
    )
    row = report["rows"][0] if report else {}
    check(
        "6. dlapp usage reports GPU-hours used",
        bool(row.get("gpu_hours_used")),
        textwrap.shorten(json.dumps(row), 300),
    )
    print("all checks passed" if not failures else f"FAILED: {', '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
