"""A stand-in for ``pynvml`` that answers from NVML answers written to a JSON file
(``tests/nvml/*.json``), for ``dlapp.runtime.gpus.discover`` on a machine without a GPU."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "nvml"


class NVMLError(Exception):
    """pynvml's base error."""


class ReplayedNvml:
    NVMLError = NVMLError

    def __init__(self, fixture: str) -> None:
        self.answers = json.loads((FIXTURES / fixture).read_text())
        self.calls: list[str] = []
        self.live = False

    def _need_init(self, call: str) -> None:
        self.calls.append(call)
        if not self.live:
            raise NVMLError("NVML_ERROR_UNINITIALIZED")

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        self.live = True

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        self.live = False

    def nvmlDeviceGetCount(self) -> int:
        self._need_init("nvmlDeviceGetCount")
        return len(self.answers["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        self._need_init("nvmlDeviceGetHandleByIndex")
        return dict(self.answers["devices"][index])

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> str:
        return str(handle["name"])

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> str:
        return str(handle["uuid"])

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> SimpleNamespace:
        total = int(handle["memory_total"])
        return SimpleNamespace(total=total, free=total, used=0)

    def nvmlDeviceGetMigMode(self, handle: dict[str, Any]) -> list[int]:
        mode = handle.get("mig_mode")
        if mode == "not_supported":
            raise NVMLError("NVML_ERROR_NOT_SUPPORTED")
        return list(mode)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: dict[str, Any]) -> int:
        return int(handle["max_mig_devices"])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: dict[str, Any], i: int) -> Any:
        slots = handle.get("mig", [])
        if i >= len(slots) or slots[i] is None:
            raise NVMLError("NVML_ERROR_NOT_FOUND")
        return dict(slots[i])

    def nvmlDeviceGetAttributes(self, handle: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(**handle["attributes"])
