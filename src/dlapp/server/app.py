"""The FastAPI application: store, executor and scheduler wired together at start.

Blocking work runs on ``api_threads`` worker threads (AnyIO's default limiter, set at start),
the store's pool is sized for them, and every request but ``/healthz`` is admitted first
(``server.admission``): one user's flood is refused, not queued in front of everyone else.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dlapp import __version__
from dlapp.config import ServerSettings
from dlapp.errors import DlappError
from dlapp.executor import Executor
from dlapp.server import admin_routes, dashboard, files, insight_routes, metrics
from dlapp.server.admission import AdmissionMiddleware
from dlapp.server.auth import AuthMiddleware, bootstrap_admin
from dlapp.server.context import Context
from dlapp.server.limits import BodyLimitMiddleware, BodyTooLarge, SubmitRateMiddleware
from dlapp.server.queue_config import QueueConfig
from dlapp.server.routes import router
from dlapp.server.scheduling.loop import Scheduler
from dlapp.server.usage_monitor import UsageMonitor
from dlapp.store.db import make_engine, migrate, pool_for_threads, session_factory

logger = logging.getLogger(__name__)
ExecutorFactory = Callable[[ServerSettings], Executor]


def _ray_executor(settings: ServerSettings) -> Executor:
    from dlapp.executor.ray import RayExecutor

    return RayExecutor(settings)


def create_app(
    settings: ServerSettings, executor_factory: ExecutorFactory = _ray_executor
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        files.harden(settings)  # data dir, artifacts, cache 0700; its files 0600
        settings.artifacts.mkdir(parents=True, exist_ok=True)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        pool = pool_for_threads(settings.api_threads, settings.max_requests)
        engine = make_engine(settings.database_url, pool)
        migrate(engine)
        executor = executor_factory(settings)
        ctx = Context(
            settings=settings,
            sessions=session_factory(engine),
            executor=executor,
            queues=QueueConfig(settings.queues_path),
        )
        bootstrap_admin(ctx)  # a fresh store gets its one admin
        scheduler = Scheduler(ctx)
        app.state.metrics = metrics.ServerMetrics(ctx)
        scheduler.observe_cycle = app.state.metrics.observe_cycle
        scheduler.after_cycle = UsageMonitor(ctx, lambda: scheduler.leading).tick
        scheduler.start()
        app.state.ctx = ctx
        app.state.scheduler = scheduler
        logger.info("dlapp server %s ready at %s", __version__, settings.url)
        try:
            yield
        finally:
            scheduler.stop()
            executor.close()
            engine.dispose()

    app = FastAPI(
        title="dlapp",
        version=__version__,
        description="Run deep-learning apps on a shared, multi-tenant GPU cluster.",
        lifespan=lifespan,
    )

    @app.exception_handler(DlappError)
    async def _dlapp_error(_request: Request, exc: DlappError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.http_status, content={"error": exc.to_dict()}, headers=exc.headers()
        )

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(status_code=413, content={"error": exc.error.to_dict()})

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:  # on the event loop: no thread, no store, no slot
        return {"status": "ok", "version": __version__}

    app.include_router(router, prefix="/api/v1")
    app.include_router(admin_routes.me_router, prefix="/api/v1")
    app.include_router(admin_routes.router, prefix="/api/v1/admin")
    app.include_router(insight_routes.router, prefix="/api/v1")  # usage, an app's spec
    app.include_router(metrics.router)  # /metrics, for Prometheus
    dashboard.install(app)  # /dashboard/: static files only; the page calls /api/v1
    # the last added runs first: admission, the token, the submission rate, the body's size
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(SubmitRateMiddleware)  # before the upload is read
    app.add_middleware(AuthMiddleware)  # 401 before anything but admission
    app.add_middleware(AdmissionMiddleware)  # 429 / 503 before a thread or the store is used
    return app
