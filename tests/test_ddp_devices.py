"""DDP on a multi-GPU node: two containers of one app on the same node, each given one GPU.
Container 1 has ``LOCAL_RANK=1`` (its rank among the app's containers on the node) and sees one
GPU, ``cuda:0``: the example (examples/ddp) must train on a device the container can see."""

from __future__ import annotations

import functools
import importlib.util
import sys
from types import ModuleType

import pytest

from dlapp.server.scheduling.plans import rendezvous

from conftest import ROOT

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")


def _example() -> ModuleType:
    path = ROOT / "examples" / "ddp" / "workspace" / "train_ddp.py"
    spec = importlib.util.spec_from_file_location("train_ddp", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_ddp", module)
    spec.loader.exec_module(module)
    return module


def test_each_container_of_a_gang_on_one_node_trains_on_a_gpu_it_sees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = _example()
    node = "10.0.0.2"
    env = rendezvous("application_1_0001", 1, [node, node])
    assert [e["LOCAL_RANK"] for e in env] == ["0", "1"]
    for index, gpu_id in enumerate(["0", "1"]):  # the node's GPU IDs dlapp gave each container
        visible = gpu_id.split(",")  # CUDA_VISIBLE_DEVICES: its GPUs only, numbered from 0
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpu_id)
        monkeypatch.setenv("LOCAL_RANK", env[index]["LOCAL_RANK"])
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", functools.partial(len, visible))
        device = example.container_device()
        assert device.type == "cuda"
        assert device.index is not None and device.index < torch.cuda.device_count(), (
            f"container {index} (LOCAL_RANK {env[index]['LOCAL_RANK']}) picked {device}, "
            f"but sees {torch.cuda.device_count()} GPU(s)"
        )


def test_without_a_gpu_the_example_trains_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _example().container_device() == torch.device("cpu")
