"""REST routes under /api/v1: thin; each validates and calls a service.

Every route needs a caller (``get_caller``): the ``AuthMiddleware`` has resolved the token.
Routes that touch the store are plain functions, run on the API's bounded worker threads
(``api_threads``); a log follow streams from the event loop and holds no thread while it waits.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from dlapp.errors import BadRequest, Forbidden, SpecError, TooManyRequests
from dlapp.scheduler import QueueConfigError
from dlapp.server import arrays, logs, queue_service, services
from dlapp.server.auth import Caller, get_caller
from dlapp.server.context import Context
from dlapp.server.views import app_view, event_view
from dlapp.spec import AppSpec
from dlapp.status import AppState
from dlapp.store import repo

router = APIRouter(dependencies=[Depends(get_caller)])
UPLOAD_NAME = "workspace.tar.gz"  # an upload's name on the server: all its errors may show
MAX_LOG_READ = 16 * 1024 * 1024  # bytes of a log one request reads at most
MAX_LINES = 1_000_000  # lines of a tail or a head


async def get_ctx(request: Request) -> Context:  # async: no worker thread for a lookup
    ctx: Context = request.app.state.ctx
    return ctx


def get_session(ctx: Annotated[Context, Depends(get_ctx)]) -> Iterator[Session]:
    with ctx.sessions() as session:
        yield session


Ctx = Annotated[Context, Depends(get_ctx)]
Db = Annotated[Session, Depends(get_session)]
User = Annotated[Caller, Depends(get_caller)]


SpecForm = Annotated[str, Form(description="the app spec, JSON of the native format")]
Workspace = Annotated[UploadFile, File(description="the workspace, tar.gz")]
Submit = Callable[[Context, Session, str, AppSpec, Path], dict[str, Any]]


@router.post("/apps", status_code=201, tags=["apps"])
def submit_app(
    request: Request, ctx: Ctx, session: Db, user: User, spec: SpecForm, workspace: Workspace
) -> dict[str, Any]:
    return _submit(request, ctx, session, user, spec, workspace, services.submit)


@router.post("/arrays", status_code=201, tags=["arrays"])
def submit_array(
    request: Request, ctx: Ctx, session: Db, user: User, spec: SpecForm, workspace: Workspace
) -> dict[str, Any]:
    """An array (the spec's ``array``) or a sweep (its ``sweep``): every member made by this one
    request, in one transaction, sharing the one workspace uploaded with it."""
    return _submit(request, ctx, session, user, spec, workspace, arrays.submit)


def _submit(
    request: Request,
    ctx: Context,
    session: Session,
    user: Caller,
    spec: str,
    workspace: UploadFile,
    use_case: Submit,
) -> dict[str, Any]:
    try:
        data = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec is not valid JSON: {exc}") from None
    app_spec = AppSpec.from_dict(data)
    with _private_upload(ctx.settings.home) as upload:
        with upload.open("wb") as f:
            shutil.copyfileobj(workspace.file, f)
        view = use_case(ctx, session, user.name, app_spec, upload)
    request.app.state.scheduler.wake()
    return view


@contextmanager
def _private_upload(home: Path) -> Iterator[Path]:
    """A path for an upload in a private directory of its own, so that an error about the
    tarball names only UPLOAD_NAME; both removed after (one unlink and one rmdir: a
    ``TemporaryDirectory``'s tree walk cost a tenth of a millisecond a submission)."""
    tmp = Path(tempfile.mkdtemp(dir=home, suffix=".upload"))
    upload = tmp / UPLOAD_NAME
    try:
        yield upload
    finally:
        upload.unlink(missing_ok=True)
        try:
            tmp.rmdir()
        except OSError:  # something else in it: never left behind
            shutil.rmtree(tmp, ignore_errors=True)


@router.get("/arrays", tags=["arrays"])
def list_arrays(
    ctx: Ctx,
    session: Db,
    me: User,
    limit: Annotated[int, Query(ge=1, le=1000, description="arrays, newest first")] = 100,
) -> dict[str, Any]:
    """The newest arrays the caller may see, each with its members' counts by state."""
    found = arrays.list_arrays(ctx, session, me, limit)
    return {"arrays": [arrays.view(session, a, ctx.settings.url) for a in found]}


@router.get("/arrays/{array_id}", tags=["arrays"])
def get_array(ctx: Ctx, session: Db, me: User, array_id: str) -> dict[str, Any]:
    """One array: what it is and its members' counts by state (its members:
    ``/apps?array=ID``; one member: ``/apps/<array id>_<index>``)."""
    return arrays.view(session, arrays.get(ctx, session, array_id, me), ctx.settings.url)


@router.post("/arrays/{array_id}/kill", tags=["arrays"])
def kill_array(
    request: Request, ctx: Ctx, session: Db, user: User, array_id: str
) -> dict[str, Any]:
    array = arrays.kill(ctx, session, array_id, soft=False, caller=user)
    request.app.state.scheduler.wake()
    return arrays.view(session, array, ctx.settings.url)


@router.post("/arrays/{array_id}/softkill", tags=["arrays"])
def softkill_array(
    request: Request, ctx: Ctx, session: Db, user: User, array_id: str
) -> dict[str, Any]:
    array = arrays.kill(ctx, session, array_id, soft=True, caller=user)
    request.app.state.scheduler.wake()
    return arrays.view(session, array, ctx.settings.url)


@router.get("/apps", tags=["apps"])
def list_apps(
    ctx: Ctx,
    session: Db,
    me: User,
    user: Annotated[str | None, Query()] = None,
    queue: Annotated[str | None, Query()] = None,
    state: Annotated[list[AppState] | None, Query()] = None,
    array: Annotated[str | None, Query(description="only this array's members")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="apps per page")] = 1000,
    before: Annotated[
        int | None, Query(ge=1, description="the previous page's `next`: the page after it")
    ] = None,
) -> Response:
    """Apps the caller may see, newest first, a page at a time: ``next`` is the cursor of the
    following page (pass it as ``before``), null on the last page."""
    page = services.list_apps(
        session,
        me,
        repo.AppFilter(user=user, queue=queue, states=state or (), array=array),
        limit=limit,
        before=before,
        queues=ctx.queues.tree,
    )
    body = {"apps": [app_view(a, ctx.settings.url) for a in page.apps], "next": page.next_before}
    return JSONResponse(body)  # plain JSON values: no jsonable_encoder pass over every row


@router.get("/apps/{app_id}", tags=["apps"])
def get_app(ctx: Ctx, session: Db, me: User, app_id: str) -> dict[str, Any]:
    return app_view(services.get(ctx, session, app_id, me), ctx.settings.url)


@router.get("/apps/{app_id}/events", tags=["apps"])
def get_events(ctx: Ctx, session: Db, me: User, app_id: str) -> dict[str, Any]:
    services.get(ctx, session, app_id, me)
    return {"events": [event_view(e) for e in repo.events(session, app_id)]}


@router.post("/apps/{app_id}/kill", tags=["apps"])
def kill_app(request: Request, ctx: Ctx, session: Db, user: User, app_id: str) -> dict[str, Any]:
    app = services.kill(ctx, session, app_id, soft=False, caller=user)
    request.app.state.scheduler.wake()
    return app_view(app, ctx.settings.url)


@router.post("/apps/{app_id}/softkill", tags=["apps"])
def softkill_app(
    request: Request, ctx: Ctx, session: Db, user: User, app_id: str
) -> dict[str, Any]:
    app = services.kill(ctx, session, app_id, soft=True, caller=user)
    request.app.state.scheduler.wake()
    return app_view(app, ctx.settings.url)


@router.get("/apps/{app_id}/logs", tags=["apps"], response_model=None)
def get_logs(
    ctx: Ctx,
    session: Db,
    me: User,
    app_id: str,
    container: Annotated[int, Query(ge=0)] = 0,
    stream: Annotated[str, Query(pattern="^(stdout|stderr)$")] = "stdout",
    offset: Annotated[int, Query(ge=0)] = 0,
    length: Annotated[
        int, Query(ge=1, le=MAX_LOG_READ, description="bytes read at most (tail, head: too)")
    ] = 1024 * 1024,
    tail: Annotated[
        int | None, Query(ge=1, le=MAX_LINES, description="the last N lines, whole (no offset)")
    ] = None,
    head: Annotated[
        int | None, Query(ge=1, le=MAX_LINES, description="the first N lines, whole")
    ] = None,
    attempt: Annotated[
        int | None, Query(ge=1, description="an earlier attempt's log; default the current one")
    ] = None,
    follow: bool = False,
) -> Response:
    """A container's log: ``length`` bytes from ``offset``, or the first or last lines (never
    cut inside a line); ``follow=true`` streams it until the container ends (after the last
    ``tail`` lines when given). Headers: where the bytes start and end in the log
    (``X-Dlapp-Offset``, ``X-Dlapp-Next-Offset``), its size then (``X-Dlapp-Size``), whether
    the container has ended and all was read (``X-Dlapp-Complete``), the attempt read."""
    if tail is not None and head is not None:
        raise BadRequest("tail and head cannot be asked together: choose one")
    if follow and head is not None:
        raise BadRequest("head cannot be followed: use tail (or neither) with follow")
    app = services.get(ctx, session, app_id, me)
    src = logs.open_log(ctx, session, app, container, stream, attempt)  # validates the request
    if follow:
        start = logs.tail(src, tail, length) if tail is not None else None
        if not ctx.follows.take(me.name):
            raise TooManyRequests(
                f"{me.name} already follows {ctx.follows.limit} logs, the most allowed "
                "(max_follows_per_user); stop one first",
                retry_after_s=1.0,
            )
        return FollowResponse(
            _after(
                start,
                logs.follow(
                    ctx, app_id, container, stream, start.next_offset if start else offset, attempt
                ),
            ),
            release=lambda: ctx.follows.give_back(me.name),
        )
    if tail is not None:
        chunk = logs.tail(src, tail, length)
    elif head is not None:
        chunk = logs.head(src, head, length)
    else:
        chunk = logs.read_range(src, offset, length, sized=True)
    return Response(
        content=chunk.data,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Dlapp-Offset": str(chunk.offset),
            "X-Dlapp-Next-Offset": str(chunk.next_offset),
            "X-Dlapp-Size": str(chunk.size),
            "X-Dlapp-Complete": "true" if chunk.complete else "false",
            "X-Dlapp-Attempt": str(src.attempt),
        },
    )


@router.get("/apps/{app_id}/logs/download", tags=["apps"], response_model=None)
def download_logs(
    ctx: Ctx,
    session: Db,
    me: User,
    app_id: str,
    container: Annotated[int, Query(ge=0)] = 0,
    stream: Annotated[str, Query(pattern="^(stdout|stderr)$")] = "stdout",
    attempt: Annotated[
        int | None, Query(ge=1, description="an earlier attempt's log; default the current one")
    ] = None,
) -> Response:
    """The whole log as it is now, as a file to save (a running container's up to its size
    when asked)."""
    app = services.get(ctx, session, app_id, me)
    src = logs.open_log(ctx, session, app, container, stream, attempt)
    return StreamingResponse(
        logs.download(src),
        media_type="text/plain; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{src.filename}"',
            "X-Dlapp-Attempt": str(src.attempt),
        },
    )


async def _after(first: logs.LogChunk | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is not None and first.data:
        yield first.data
    async for data in rest:
        yield data


@router.get("/cluster", tags=["cluster"])
def get_cluster(ctx: Ctx, session: Db) -> dict[str, Any]:
    return services.cluster(ctx, session)


@router.get("/queues", tags=["queues"])
def get_queues(ctx: Ctx, session: Db) -> dict[str, Any]:
    """The queue tree: guaranteed / maximum / used / pending per resource, users' shares."""
    return queue_service.queues_view(ctx, session)


@router.post("/queues/reload", tags=["queues"])
def reload_queues(request: Request, ctx: Ctx, session: Db, caller: User) -> dict[str, Any]:
    """Read the queue file again now (admins); an invalid one is refused, the running one kept."""
    if not caller.is_admin:
        raise Forbidden("only cluster admins may reload the queue configuration")
    result = ctx.queues.reload(force=True)
    if result.error is not None:
        raise QueueConfigError(result.error)
    request.app.state.scheduler.wake()
    return queue_service.queues_view(ctx, session)


class FollowResponse(StreamingResponse):
    """A followed log, streamed; its follow slot is given back when the stream ends, however
    it ends (finished, the client gone, the server stopping), or if it never starts."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/plain; charset=utf-8")
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
