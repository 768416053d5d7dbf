"""The server's queue configuration: loaded at start, reloaded when its file changes.

An invalid new configuration is refused with the reason and the running one is kept; the
reason stays visible (``GET /api/v1/queues``, ``dlapp queues``) until a valid one is loaded.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from dlapp.scheduler import DEFAULT_TREE, QueueConfigError, QueueTree, parse_tree

logger = logging.getLogger(__name__)


def load_tree(path: Path) -> QueueTree:
    """The tree in ``path``; the built-in single ``root.default`` queue when there is no file."""
    if not path.exists():
        return DEFAULT_TREE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise QueueConfigError(f"{path}: cannot read it: {exc}") from None
    return parse_tree(data, str(path))


@dataclass(frozen=True)
class ReloadResult:
    changed: bool
    error: str | None


class QueueConfig:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp = self._read_stamp()
        self.tree = load_tree(path)  # an invalid file at start is an error: fail loudly
        self.error: str | None = None

    def _read_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime, st.st_size)

    def reload(self, force: bool = False) -> ReloadResult:
        """Load the file again if it changed (or ``force``); keep the running tree if invalid."""
        with self._lock:
            stamp = self._read_stamp()
            if not force and stamp == self._stamp:
                return ReloadResult(False, self.error)
            self._stamp = stamp
            try:
                tree = load_tree(self.path)
            except QueueConfigError as exc:
                self.error = exc.message
                logger.error("queue configuration refused, keeping the running one: %s", exc)
                return ReloadResult(False, self.error)
            changed = tree != self.tree
            self.tree, self.error = tree, None
            if changed:
                logger.info("queue configuration reloaded from %s", self.path)
            return ReloadResult(changed, None)
