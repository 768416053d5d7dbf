"""Executors: start an app's containers somewhere and report what becomes of them.

``Executor`` is the base (shared logging and bookkeeping around abstract hooks);
``RayExecutor`` runs supervisors as Ray actors; ``LocalExecutor`` runs them in threads of this
process, for tests of the layers above and for machines without Ray.
"""

from dlapp.executor.base import Executor, NodeInfo, Report
from dlapp.executor.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "NodeInfo", "Report"]
