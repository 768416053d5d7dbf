"""Use cases behind the routes: submit, look, kill, see the cluster (logs: ``server.logs``)."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dlapp.arrays import split_member
from dlapp.data import staging, workspace
from dlapp.errors import BadRequest, ConflictError, NotFoundError, PayloadTooLarge
from dlapp.runtime import get_runtime
from dlapp.runtime.policy import check_container
from dlapp.scheduler import NodeView, QueueTree, Resources, check_feasible
from dlapp.server import limits, tenancy
from dlapp.server import nodes as node_states
from dlapp.server.auth import Caller, may_see
from dlapp.server.context import Context
from dlapp.server.queue_service import app_request, resolve_queue, spec_request
from dlapp.server.views import app_view
from dlapp.spec import AppSpec
from dlapp.status import AppState, FinalStatus, StopReason
from dlapp.store import arrays as array_store
from dlapp.store import audit, repo, users
from dlapp.store.models import App, User

MB = 1024 * 1024


def _limits(ctx: Context) -> workspace.WorkspaceLimits:
    s = ctx.settings
    return workspace.WorkspaceLimits(
        max_bytes=s.workspace_max_mb * MB, max_files=s.workspace_max_files
    )


def node_views(ctx: Context) -> list[NodeView]:
    """The live nodes, empty: their GPU models and MIG instances as they report them."""
    return [
        NodeView(
            n.node_id,
            n.name,
            n.total,
            n.total,
            model=n.model,
            mig_total=tuple(sorted(Counter(p for _, p, _ in n.mig).items())),
            mig_free=tuple(sorted(Counter(p for _, p, _ in n.mig).items())),
        )
        for n in ctx.nodes()
        if n.alive
    ]


def check_submission(
    ctx: Context, session: Session, user: str, spec: AppSpec, upload: Path, adding: int = 1
) -> AppSpec:
    """Everything that can be checked before ``adding`` apps of ``spec`` are kept (one app, or
    an array's members); the spec with its queue resolved."""
    # 0. refuse a caller over their limits (apps waiting, submission rate)
    limits.check_submit(ctx, session, user, adding)
    # 1. refuse what could never run, before anything is kept
    if upload.stat().st_size > ctx.settings.max_upload_mb * MB:
        raise PayloadTooLarge(f"the workspace tarball is over {ctx.settings.max_upload_mb} MiB")
    check_feasible(
        spec_request(spec),
        spec.num_containers,
        node_views(ctx),
        spec.nodes.include,
        spec.nodes.exclude,
        spec.resources.gpu_type,
        spec.resources.mig,
    )
    spec = resolve_queue(ctx, spec, user, frozenset(users.user_groups(session, user)))
    limits.check_queue_pending(ctx, session, ctx.queues.tree, spec.queue, adding)
    tenancy.check_submit(ctx, session, user, spec)  # runtimes allowed, the server's own files
    policy = ctx.settings.container_policy
    get_runtime(spec.runtime, policy)  # a runtime this cluster cannot run is refused now
    check_container(spec, policy)  # and so are privileged, host mounts, disallowed images
    data = tenancy.data(ctx, tenancy.multi_user(ctx, session))
    staging.check_urls(spec, config=data)
    staging.check_outputs_writable(spec, config=data)
    workspace.inspect_tarball(upload, _limits(ctx), entry=spec.entry.script)
    return spec


def submit(
    ctx: Context, session: Session, user: str, spec: AppSpec, upload: Path
) -> dict[str, Any]:
    """Check everything that can be checked now, then store the app as ACCEPTED."""
    if spec.is_array:
        raise BadRequest(
            "this spec is an array or a sweep: submit it to /api/v1/arrays (dlapp launch does)"
        )
    spec = check_submission(ctx, session, user, spec, upload)

    # 2. keep the tarball under the app's id and record the app, as one step
    def add(dest: Path, app_id: str, seq: int, now: float) -> dict[str, Any]:
        app = repo.add_app(
            session, repo.NewApp(user=user, spec=spec, workspace=str(dest)), now, app_id, seq
        )
        audit.record(session, user, "submit", app_id, now, f"queue {spec.queue}, name {spec.name}")
        # the view of the app as added, before the commit expires it (reading it after would
        # load the app and its relations again: four queries per submission)
        return app_view(app, ctx.settings.url)

    return keep_new(ctx, session, upload, repo.next_app_id, add)


ID_TRIES = 5  # a sequence number another server took first is taken again, this many times
_taking_ids = threading.Lock()  # one submission at a time takes the next ids in this server

T = TypeVar("T")


def keep_new(
    ctx: Context,
    session: Session,
    upload: Path,
    next_id: Callable[[Session, float], tuple[str, int]],
    add: Callable[[Path, str, int, float], T],
) -> T:
    """Take the next id and sequence number (``next_id``), keep the upload under that id and
    add the rows (``add(tarball, id, seq, now)``), all committed together, and return what
    ``add`` made. Ids are one past the largest taken: submissions at once in this server take
    theirs one at a time; one that another server (sharing the store) took first between the
    read and the commit fails the commit, or finds its tarball kept, and is taken again."""
    for attempt in range(ID_TRIES):
        with _taking_ids:
            now = ctx.clock()
            key, seq = next_id(session, now)
            try:
                with keep_upload(ctx, session, upload, key) as dest:
                    return add(dest, key, seq, now)
            except (IntegrityError, FileExistsError):
                if attempt == ID_TRIES - 1:
                    raise ConflictError(
                        f"could not take a new id in {ID_TRIES} tries (other servers took "
                        "each first); submit again"
                    ) from None
    raise AssertionError("unreachable")


@contextmanager
def keep_upload(ctx: Context, session: Session, upload: Path, key: str) -> Iterator[Path]:
    """The upload kept as ``workspaces/<key>.tar.gz`` together with the rows the block adds:
    both are kept, and committed, or neither (the tarball is put in place last, never over
    one kept already: ``FileExistsError``, its id taken by another server). Acknowledged means
    durable: the tarball's bytes and its name are synced to disk before the commit, as the
    commit itself is (``synchronous=FULL``), so no power loss leaves an app without its
    workspace."""
    dest = ctx.settings.artifacts / "workspaces" / f"{key}.tar.gz"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
    try:  # the upload is the request's own file: a second name for it costs no copy
        os.link(upload, tmp)
    except OSError:  # another filesystem
        shutil.copyfile(upload, tmp)
    placed = False
    try:
        yield dest
        sync(tmp)
        os.link(tmp, dest)  # fails if it exists
        placed = True
        sync(dest.parent)
        session.commit()
    except BaseException:
        session.rollback()
        if placed:
            dest.unlink(missing_ok=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def sync(path: Path) -> None:
    """``path`` on disk: a file's bytes, or a directory's entries (a new name in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def get(ctx: Context, session: Session, app_id: str, caller: Caller) -> App:
    """The app, if ``caller`` may see it; someone else's app is not found, as a missing one.
    An array's member is found by its app id or as ``<array id>_<index>``."""
    named = split_member(app_id)
    app = array_store.member(session, *named) if named else session.get(App, app_id)
    if app is None or not may_see(caller, app, ctx.queues.tree):
        raise NotFoundError(f"no app {app_id}")
    return app


def list_apps(
    session: Session,
    caller: Caller,
    where: repo.AppFilter,
    limit: int = 1000,
    before: int | None = None,
    queues: QueueTree | None = None,
) -> repo.AppPage:
    """A page of the apps the caller may see: their own, those in queues they administer, or
    everyone's for a cluster admin, narrowed in the query itself (so every page is full).
    Asking for another user's apps shows only what the caller may see; asking for a user this
    server does not know is an error (404) that says so."""
    if where.user and session.get(User, where.user) is None:
        raise NotFoundError(f"no user {where.user!r} on this server")
    if not caller.is_admin:
        administered = queues.administered_by(caller.name, caller.groups) if queues else []
        if not administered and where.user not in (None, "", caller.name):
            return repo.AppPage([], None)
        where = replace(where, visible_to=(caller.name, administered))
    return repo.apps_page(session, where, limit, before)


def kill(ctx: Context, session: Session, app_id: str, soft: bool, caller: Caller) -> App:
    """Kill now, or softkill: SIGTERM, the grace period, then SIGKILL."""
    app = get(ctx, session, app_id, caller)
    state = AppState(app.state)
    word = "softkill" if soft else "kill"
    now = ctx.clock()
    if state.is_terminal():
        raise ConflictError(f"{app_id} already finished ({app.final_status})")
    stop(ctx, session, app, soft, now)
    audit.record(session, caller.name, word, app.id, now, f"app of {app.user}, was {state.value}")
    session.commit()
    return app


def stop(ctx: Context, session: Session, app: App, soft: bool, now: float) -> None:
    """Kill or softkill an unfinished app: a queued one finishes now, a running one is marked
    for the scheduler to stop (not committed)."""
    word = "softkill" if soft else "kill"
    if AppState(app.state) is AppState.ACCEPTED:
        repo.transition(
            session, app, AppState.FINISHED, f"{word}ed while queued", now, FinalStatus.KILLED
        )
    else:
        grace = ctx.settings.softkill_grace_s if soft else 0.0
        app.kill_requested = StopReason.SOFTKILL if soft else StopReason.KILL
        repo.add_event(session, app.id, "info", f"{word} requested (grace {grace:g}s)", now)
        # the scheduler (on whichever server holds the lease) stops it: Reconciler.apply_kills


def cluster(ctx: Context, session: Session) -> dict[str, Any]:
    """Every node with its resources and GPU model, and each GPU (or MIG instance): free, or
    the apps and users holding it, with the share each holds (fractional apps share one GPU;
    ``app_id`` and ``user`` name the first holder)."""
    held: dict[str, dict[str, list[dict[str, Any]]]] = {}
    used: dict[str, Resources] = {}
    for app, c in repo.allocations(session):
        used[c.node_id] = used.get(c.node_id, Resources()) + app_request(app)
        share = app.gpus if 0 < app.gpus < 1 else 1.0
        for gpu in filter(None, c.gpu_ids.split(",")):
            held.setdefault(c.node_id, {}).setdefault(gpu, []).append(
                {"app_id": app.id, "user": app.user, "container": str(c.index), "share": share}
            )
    nodes = []
    held_back = node_states.states(session)
    for n in ctx.nodes():
        u = used.get(n.node_id, Resources())
        state = held_back.get(n.node_id, "ready")
        if state == "drain":
            state = "draining" if n.node_id in used else "drained"
        elif state == "cordon":
            state = "cordoned"
        nodes.append(
            {
                "node_id": n.node_id,
                "name": n.name,
                "alive": n.alive,
                "state": state if n.alive else "lost",
                "total": _res(n.total),
                "used": _res(u),
                "free": _res(n.total - u),
                "model": n.model,
                "gpus": [_gpu(g, held.get(n.node_id, {}).get(g, [])) for g in n.gpu_ids]
                + [
                    _gpu(uuid, held.get(n.node_id, {}).get(uuid, []), profile)
                    for uuid, profile, _ in n.mig
                ],
            }
        )
    return {
        "nodes": nodes,
        "apps": {
            s.value: n
            for s, n in repo.count_apps(session, (AppState.ACCEPTED, AppState.RUNNING)).items()
        },
    }


def _gpu(gpu: str, holders: list[dict[str, Any]], mig: str | None = None) -> dict[str, Any]:
    """One GPU (or MIG instance) of the map: its holders and the share of it left free."""
    free = max(0.0, 1.0 - sum(h["share"] for h in holders))
    first = holders[0] if holders else {"app_id": None, "user": None, "container": None}
    return {
        "id": gpu,
        "app_id": first["app_id"],
        "user": first["user"],
        "container": first["container"],
        "holders": holders,
        "free": round(free, 3),
        **({"mig": mig} if mig else {}),
    }


def _res(r: Resources) -> dict[str, float | int]:
    return {"cpus": r.cpus, "memory_mb": r.memory_mb, "gpus": r.gpus}
