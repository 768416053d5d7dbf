"""Container runtimes: start one container of an app, signal it, wait for it.

``get_runtime(name)`` picks one by the spec's name: ``process``, ``docker`` or ``podman``.
``FakeRuntime`` is the in-process fake for tests of the layers above.
"""

from dlapp.runtime.base import LaunchRequest, Running, Runtime
from dlapp.runtime.fake import FakeRunning, FakeRuntime
from dlapp.runtime.process import ProcessRuntime
from dlapp.runtime.registry import get_runtime

__all__ = [
    "FakeRunning",
    "FakeRuntime",
    "LaunchRequest",
    "ProcessRuntime",
    "Running",
    "Runtime",
    "get_runtime",
]
