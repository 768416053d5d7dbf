"""What runs on the node for one container: stage in, run, stage out, keep the logs.

``Supervisor`` is a plain class; the Ray executor runs it as a detached, named actor
(``dlapp:<app_id>:<index>``) that holds the container's CPUs, memory and GPUs. It fate-shares
with its container: the runtime's guard kills the process tree if the supervisor dies.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from dlapp import unix_accounts
from dlapp.config import ContainerPolicy
from dlapp.contract import (
    STREAMS,
    ContainerCause,
    ContainerPlan,
    ContainerResult,
    MeterPlan,
    Shipment,
    gpu_env,
    log_dir,
    notice_contents,
    stop_diagnostics,
)
from dlapp.data import staging, workspace
from dlapp.data.locations import DataConfig
from dlapp.data.progress import Progress
from dlapp.errors import DlappError
from dlapp.node.gpu_usage import ContainerMeter
from dlapp.runtime import LaunchRequest, Running, get_runtime
from dlapp.runtime.gpus import mps_running
from dlapp.spec import AppSpec, DataBinding
from dlapp.unix_accounts import Account, AccountPlan

logger = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, plan: ContainerPlan) -> None:
        self.plan = plan
        self.spec = AppSpec.from_dict(plan.spec)
        self.data = DataConfig.from_dict(plan.data)
        self.root = Path(plan.work_root) / plan.app_id / str(plan.attempt) / str(plan.index)
        self.workdir = self.root / "workspace"
        self.logs = self.root / "logs"
        self._running: Running | None = None
        self._stop_grace: float | None = None
        self._notice: dict[str, Any] | None = None  # the last stop's notice (its reason)
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._wait_lock = threading.Lock()
        self._result: ContainerResult | None = None
        self._info: dict[str, Any] | None = None
        self._start_error: str | None = None
        self.meter = ContainerMeter(MeterPlan.from_dict(plan.meter))
        self._notes: list[tuple[float, str]] = []  # (time, line) not yet reported
        self._notes_lock = threading.Lock()
        self.account: Account | None = None  # resolved on the node, in start

    # -- life -----------------------------------------------------------------------------------

    def start(self, gpu_ids: list[str], node_name: str) -> dict[str, Any]:
        """Stage in and launch; returns where and how it runs. Raises with the reason on failure."""
        try:
            self._info = self._start(gpu_ids, node_name)
            return self._info
        except BaseException as exc:
            self._start_error = str(exc) if isinstance(exc, DlappError) else repr(exc)
            raise
        finally:
            self._started.set()

    def _start(self, gpu_ids: list[str], node_name: str) -> dict[str, Any]:
        plan, spec = self.plan, self.spec
        if plan.account:
            self.account = unix_accounts.resolve(AccountPlan.from_dict(plan.account))
            unix_accounts.make_passable(Path(plan.work_root))
        if self.root.exists():
            shutil.rmtree(self.root)
        self.logs.mkdir(parents=True, mode=0o700)
        for stream in STREAMS:
            (self.logs / stream).touch(mode=0o600)
        workspace.extract_workspace(
            Path(plan.workspace_tarball),
            self.workdir,
            workspace.WorkspaceLimits(max_bytes=plan.max_bytes, max_files=plan.max_files),
        )
        with self.meter.staging("in") as moved:
            moved.bytes = self._stage_in()
        # the engine's device IDs (Ray's) where it hands them out, else those dlapp chose
        gpu_ids = list(gpu_ids) or list(plan.gpu_ids)
        env = {
            # CUDA numbers devices fastest first; Ray, NVML and the GPU map by PCI bus: the same
            # numbers everywhere (an app may still choose otherwise in its env)
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            **spec.env,
            "DLAPP_APP_ID": plan.app_id,
            "CONTAINER_INDEX": str(plan.index),
            "NUM_CONTAINERS": str(plan.num_containers),
            # MPS serves processes of this machine; a container engine's would need its
            # pipes mounted in, which dlapp does not do: there the share is stated only
            **gpu_env(
                gpu_ids,
                plan.gpu_share,
                plan.gpu_memory_mb,
                spec.runtime == "process" and mps_running(),
            ),
            "DLAPP_WORKSPACE": str(self.workdir),
            "DLAPP_NOTICE_FILE": str(self.notice_file),
            "DLAPP_CHECKPOINT_DIR": str(self._checkpoints()),
            **plan.rendezvous,
            **plan.array_env,
        }
        request = LaunchRequest(
            app_id=plan.app_id,
            index=plan.index,
            workdir=self.workdir,
            script=spec.entry.script,
            args=tuple(spec.entry.args),
            env=env,
            stdout=self.logs / "stdout",
            stderr=self.logs / "stderr",
            image=spec.image,
            cpus=spec.resources.cpus,
            memory_mb=spec.resources.memory_mb,
            gpu_ids=tuple(gpu_ids),
            container=spec.container,
            node_id=plan.node_id or None,
            account=self.account,
            home=self.root / "home" if self.account else None,
        )
        policy = ContainerPolicy.model_validate(plan.container) if plan.container else None
        with self._lock:
            if self._stop_grace is not None:
                raise DlappError("stopped before the container started")
            self._running = get_runtime(spec.runtime, policy).launch(request)
        self.meter.start(gpu_ids)  # samples the container's GPUs until it exits
        return {
            "node_name": node_name,
            "gpu_ids": gpu_ids,
            "pid": self._running.pid,
            "start_time": time.time(),
            "notes": self._take_notes(),  # staging in: totals, progress, summary
        }

    def wait_once(self) -> ContainerResult:
        """``wait``, done once: a later caller (a server that took the app over after a
        restart) blocks until the first call is done and gets the same result."""
        with self._wait_lock:
            if self._result is None:
                self._result = self.wait()
            return self._result

    def started_info(self) -> dict[str, Any] | None:
        """What ``start`` returned, once it is done (for a server taking the app over);
        None when it failed to start."""
        self._started.wait()
        return self._info

    def usage(self) -> dict[str, Any]:
        """GPU utilisation and staging so far (``gpu_usage.ContainerMeter.report``)."""
        return self.meter.report()

    def wait(self) -> ContainerResult:
        """Block until the container exits; stage out, keep the logs, clean up."""
        self._started.wait()
        if self._running is None:
            location = self._keep_logs()
            return ContainerResult(
                None,
                self._start_error or "did not start",
                location,
                time.time(),
                self._killed,
                notes=self._take_notes(),
            )
        code: int | None
        failed_outputs: tuple[str, ...] = ()
        code, diagnostics, cause = self._wait_exit(self._running)
        self.meter.stop()
        if code == 0 and not self._killed:
            try:
                with self.meter.staging("out") as moved:
                    moved.bytes = self._stage_out(self._outputs())
            except Exception as exc:  # any store's error fails the container, with the reason
                code_note = str(exc) if isinstance(exc, DlappError) else repr(exc)
                diagnostics = f"staging out failed: {code_note}"
                code = None
        elif not self._killed:
            failed_outputs = self._save_failed_outputs()
        location = self._keep_logs()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.root / "home", ignore_errors=True)
        return ContainerResult(
            code,
            diagnostics,
            location,
            time.time(),
            self._killed,
            self.meter.report(),
            notes=self._take_notes(),
            cause=cause,
            failed_outputs=failed_outputs,
        )

    def _save_failed_outputs(self) -> tuple[str, ...]:
        """A failed app's outputs go to ``<url>.failed-<app id>`` (``save_on_failure``);
        returns where those it had written went."""
        outputs = self._outputs()
        written = tuple(
            staging.failed_url(b.url, self.plan.app_id)
            for b in outputs
            if b.save_on_failure and _produced(self.workdir, b.path)
        )
        try:
            self._stage_out(outputs, failed_app_id=self.plan.app_id)
        except Exception as exc:  # best effort: the app has failed already
            self._note(f"could not save the failed app's outputs: {exc}")
            return ()
        return written

    # -- data, as the app's account --------------------------------------------------------------

    def _stage_in(self) -> int:
        """Stage the inputs in. With an account, remote inputs first, as the node, into the
        workspace while only the node can reach it; then the workspace goes to the account,
        and local inputs are read as the account: a user reaches exactly the files their
        account could."""
        inputs = self.spec.inputs
        if self.account is None:
            return staging.stage_in(inputs, self.workdir, self._note, config=self.data)
        local, remote = _local_and_remote(inputs)
        moved = staging.stage_in(remote, self.workdir, self._note, config=self.data)
        self._hand_over()
        if local:
            workdir, data = self.workdir, self.data
            moved += unix_accounts.run_as(
                self.account,
                lambda say: staging.stage_in(local, workdir, say, config=data),
                self._note,
            )
        return moved

    def _stage_out(self, outputs: tuple[DataBinding, ...], failed_app_id: str | None = None) -> int:
        """Commit the outputs. With an account, local outputs are read and written as the
        account (a forked helper: it runs only code already loaded here, so it imports no
        store client); remote ones are uploaded by the node with the profiles' credentials,
        after the container has ended."""
        workdir, data = self.workdir, self.data

        def commit(bindings: tuple[DataBinding, ...], say: Progress | None) -> int:
            return staging.stage_out(
                bindings, workdir, say, config=data, failed_app_id=failed_app_id
            )

        if self.account is None:
            return commit(outputs, self._note)
        local, remote = _local_and_remote(outputs)
        moved = commit(remote, self._note)
        if local:
            moved += unix_accounts.run_as(self.account, lambda say: commit(local, say), self._note)
        return moved

    def _hand_over(self) -> None:
        """Give the app's account its workspace and a fresh HOME (0700 each); the container's
        directory and its parents up to the work root may be passed, never listed; the logs
        stay the node's."""
        assert self.account is not None
        unix_accounts.passable(self.root, top=Path(self.plan.work_root))
        unix_accounts.hand_over(self.workdir, self.account)
        home = unix_accounts.private_dir(self.root / "home", self.account)
        unix_accounts.private_dir(home / "tmp", self.account)

    def _checkpoints(self) -> Path:
        """The app's checkpoint directory, kept across attempts; with an account, its own
        (0700), its parents up to the checkpoint root passable, never listable."""
        kept = self.checkpoint_dir()
        if self.account is None:
            kept.mkdir(parents=True, exist_ok=True)
            return kept
        top = kept.parent.parent
        unix_accounts.make_passable(top)
        kept.parent.mkdir(exist_ok=True)
        unix_accounts.passable(kept.parent, top=top)
        kept.mkdir(exist_ok=True)
        unix_accounts.hand_over(kept, self.account)
        return kept

    def _outputs(self) -> tuple[DataBinding, ...]:
        """The outputs this container writes: in a gang, each container under its own
        ``container-<index>`` below the output URL, so the containers never overwrite
        each other's results."""
        if self.plan.num_containers == 1:
            return self.spec.outputs
        return tuple(
            b.model_copy(update={"url": f"{b.url.rstrip('/')}/container-{self.plan.index}"})
            for b in self.spec.outputs
        )

    def _wait_exit(self, running: Running) -> tuple[int, str, ContainerCause]:
        limit = self.spec.max_runtime_s
        code = running.wait(limit)
        if code is None:  # over its max runtime
            self._note(f"exceeded max runtime of {limit}s; stopping")
            code = running.stop(grace=10.0)
            return code, f"exceeded its max runtime of {limit}s", ContainerCause.EXITED
        if self._killed:
            return code, stop_diagnostics(self._notice), ContainerCause.KILLED
        if code == 0:
            return code, "", ContainerCause.EXITED
        note = running.exit_note()  # e.g. out of memory
        return (
            code,
            f"exited with code {code}" + (f": {note}" if note else ""),
            ContainerCause.EXITED,
        )

    @property
    def _killed(self) -> bool:
        return self._stop_grace is not None

    def stop(self, grace: float, notice: dict[str, Any] | None = None) -> None:
        """Kill (grace 0) or softkill (SIGTERM, ``grace`` seconds, SIGKILL).

        ``notice`` is written to ``$DLAPP_NOTICE_FILE`` before the SIGTERM: the reason
        (``preempted``, ``softkill``) and the deadline after which SIGKILL comes.
        """
        with self._lock:
            self._stop_grace = grace
            self._notice = notice
            running = self._running
        if notice is not None:
            self._write_notice(notice)
        if running is not None:
            self._note(f"stopping: SIGTERM, then SIGKILL after {grace:g}s" if grace else "killing")
            running.stop(grace)

    @property
    def notice_file(self) -> Path:
        return self.root / "notice.json"

    def checkpoint_dir(self) -> Path:
        """Kept across attempts of the app (in the artifact store): where to checkpoint."""
        root = self.plan.checkpoint_root or str(Path(self.plan.artifact_root) / "checkpoints")
        return Path(root) / self.plan.app_id / str(self.plan.index)

    def _write_notice(self, notice: dict[str, Any]) -> None:
        tmp = self.notice_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(notice_contents(notice)))
            if self.account is not None:  # the app reads it; the directory stays the node's
                unix_accounts.give(tmp, self.account, 0o600)
            os.replace(tmp, self.notice_file)
        except OSError:
            logger.exception("could not write the notice of %s", self.plan.actor_name)

    # -- logs -----------------------------------------------------------------------------------

    def read_log(self, stream: str, offset: int, length: int) -> bytes:
        if stream not in STREAMS:
            raise DlappError(f"unknown log stream {stream!r}; use one of {STREAMS}")
        path = self.logs / stream
        try:
            with path.open("rb") as f:
                f.seek(max(0, offset))
                return f.read(max(0, length))
        except FileNotFoundError:
            return b""

    def log_size(self, stream: str) -> int:
        if stream not in STREAMS:
            raise DlappError(f"unknown log stream {stream!r}; use one of {STREAMS}")
        try:
            return (self.logs / stream).stat().st_size
        except FileNotFoundError:
            return 0

    def ship(self, offsets: dict[str, int], max_bytes: int) -> Shipment:
        """The logs' bytes from ``offsets`` (at most ``max_bytes`` of each stream) and the
        notes since the last report: the server appends the bytes to the kept logs while the
        container runs, and records the notes (staging progress) as the app's events."""
        logs = {}
        for stream in STREAMS:
            offset = offsets.get(stream, 0)
            data = self.read_log(stream, offset, max_bytes)
            if data:
                logs[stream] = (offset, data)
        return Shipment(logs, self._take_notes())

    def _keep_logs(self) -> str | None:
        """Copy the logs into the artifact store so they outlive the node."""
        dest = log_dir(
            self.plan.artifact_root, self.plan.app_id, self.plan.attempt, self.plan.index
        )
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for stream in STREAMS:
                src = self.logs / stream
                if src.exists():
                    tmp = dest / f".{stream}.tmp"
                    shutil.copyfile(src, tmp)
                    os.replace(tmp, dest / stream)
        except OSError:
            logger.exception("could not keep the logs of %s", self.plan.actor_name)
            return None
        return str(dest)

    def _note(self, message: str) -> None:
        """A line for the container's log and, with the next report, the app's events."""
        logger.info("%s: %s", self.plan.actor_name, message)
        with self._notes_lock:
            self._notes.append((time.time(), message))
        try:
            with (self.logs / "stderr").open("a") as f:
                f.write(f"[dlapp] {message}\n")
        except OSError:
            pass

    def _take_notes(self) -> tuple[tuple[float, str], ...]:
        """The lines noted since the last report (``start``'s, then ``wait``'s): staging's
        totals, progress and summaries, stops. Each report carries its own."""
        with self._notes_lock:
            notes, self._notes = tuple(self._notes), []
        return notes


def _local_and_remote(
    bindings: tuple[DataBinding, ...],
) -> tuple[tuple[DataBinding, ...], tuple[DataBinding, ...]]:
    """(local paths and file:// URLs, the rest): what the app's account stages, what the node
    does."""
    local = tuple(b for b in bindings if b.scheme == "file")
    return local, tuple(b for b in bindings if b.scheme != "file")


def _produced(workdir: Path, path: str) -> bool:
    """Whether the app wrote its output ``path`` (as ``staging.stage_out`` checks it)."""
    src = workdir / path
    try:
        return src.exists() or src.is_symlink()
    except OSError:  # not ours to look into: not claimed
        return False
