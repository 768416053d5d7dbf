"""Tables: apps (an array's members among them), arrays, containers (one row per container
per attempt), events, meta; users, tokens, audit; gpu_usage (per container), queue_samples
(per queue over time)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class App(Base):
    __tablename__ = "apps"
    __table_args__ = (  # lists are newest first (seq) by user or queue; limits count by state
        Index("ix_apps_user_seq", "user", "seq"),
        Index("ix_apps_queue_seq", "queue", "seq"),
        Index("ix_apps_state_user", "state", "user"),
        # a queue's waiting apps counted, and which apps wait read, from the index alone
        Index("ix_apps_state_queue", "state", "queue", "seq", "attempt"),
        Index("ix_apps_array_index", "array_id", "array_index", unique=True),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    user: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16))
    final_status: Mapped[str] = mapped_column(String(16))
    diagnostics: Mapped[str] = mapped_column(Text, default="")
    pending_reason: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[str] = mapped_column(Text)  # JSON of AppSpec.to_dict()
    num_containers: Mapped[int] = mapped_column(Integer)
    cpus: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[float] = mapped_column(Float)  # per container: a share (see spec gpu_share)
    workspace: Mapped[str] = mapped_column(Text)  # tarball location in the artifact store
    kill_requested: Mapped[str | None] = mapped_column(String(16), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    submit_time: Mapped[float] = mapped_column(Float)
    start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    finish_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    # a member of an array: the array, its index there, its sweep values (JSON; "" without)
    array_id: Mapped[str | None] = mapped_column(
        ForeignKey("arrays.id", ondelete="CASCADE"), nullable=True
    )
    array_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    array_values: Mapped[str] = mapped_column(Text, default="", server_default="")

    array: Mapped[AppArray | None] = relationship(lazy="select")
    containers: Mapped[list[Container]] = relationship(
        back_populates="app", order_by="(Container.attempt, Container.index)", lazy="selectin"
    )
    gpu_usage: Mapped[list[GpuUsage]] = relationship(lazy="selectin", viewonly=True)


class AppArray(Base):
    """An array of apps (or a parameter sweep) made by one request: its members are ``apps``
    rows with its ``array_id``, sharing its one uploaded workspace."""

    __tablename__ = "arrays"
    __table_args__ = (Index("ix_arrays_user_seq", "user", "seq"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # array_<ts>_<seq:04d>
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    user: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(256))
    size: Mapped[int] = mapped_column(Integer)
    max_running: Mapped[int | None] = mapped_column(Integer, nullable=True)  # Slurm's %N
    indices: Mapped[str] = mapped_column(Text, default="")  # the --array text ("" for a sweep)
    sweep: Mapped[str] = mapped_column(Text, default="")  # JSON of the sweep ("" without)
    workspace: Mapped[str] = mapped_column(Text)
    submit_time: Mapped[float] = mapped_column(Float)


class Container(Base):
    __tablename__ = "containers"
    __table_args__ = (Index("ix_containers_app_attempt", "app_id", "attempt", "index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    node_id: Mapped[str] = mapped_column(String(128))
    node_name: Mapped[str] = mapped_column(String(256), default="")
    gpu_ids: Mapped[str] = mapped_column(String(256), default="")  # "0,1"
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    log_location: Mapped[str | None] = mapped_column(Text, nullable=True)
    diagnostics: Mapped[str] = mapped_column(Text, default="")
    # contract.ContainerCause once it has ended ("" before): what the scheduler decides from.
    # Deferred: only the scheduler's queries (repo.*_containers) load it
    cause: Mapped[str] = mapped_column(String(16), server_default="", deferred=True)

    app: Mapped[App] = relationship(back_populates="containers")


class GpuUsage(Base):
    """What a container's supervisor measured (``gpu_usage.ContainerMeter``): GPU-seconds used,
    the last reading, when its GPUs were last busy (server clock), staging bytes and seconds."""

    __tablename__ = "gpu_usage"
    container_id: Mapped[int] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), primary_key=True
    )
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    updated: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    gpu_seconds_used: Mapped[float] = mapped_column(Float, default=0.0)
    seconds_sampled: Mapped[float] = mapped_column(Float, default=0.0)
    utilisation: Mapped[float | None] = mapped_column(Float, nullable=True)  # last, mean of GPUs
    memory_used_mb: Mapped[int] = mapped_column(Integer, default=0)  # last, sum of GPUs
    memory_peak_mb: Mapped[int] = mapped_column(Integer, default=0)
    gpus: Mapped[str] = mapped_column(Text, default="{}")  # JSON: id -> last utilisation, memory
    busy_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # a GPU last >= idle_below
    idle_flagged: Mapped[float | None] = mapped_column(Float, nullable=True)  # flagged idle at
    staged_in_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    staged_in_s: Mapped[float] = mapped_column(Float, default=0.0)
    staged_out_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    staged_out_s: Mapped[float] = mapped_column(Float, default=0.0)


class QueueSample(Base):
    """One queue (``""``: the whole cluster) at one time, for plots over time."""

    __tablename__ = "queue_samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    queue: Mapped[str] = mapped_column(String(256))
    gpus_capacity: Mapped[int] = mapped_column(Integer)  # cluster: total; queue: guaranteed
    gpus_allocated: Mapped[int] = mapped_column(Integer)
    gpus_used: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: not sampled
    apps_running: Mapped[int] = mapped_column(Integer)
    apps_pending: Mapped[int] = mapped_column(Integer)
    wait_s: Mapped[float] = mapped_column(Float)  # the longest wait of an app still pending


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    time: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))  # state | container | staging | info
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")


class User(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    groups: Mapped[str] = mapped_column(Text, default="")  # "ml,vision": sorted, comma-separated
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[float] = mapped_column(Float)


class Token(Base):
    """An API token, kept only as the SHA-256 of its text; the text is shown once."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[float] = mapped_column(Float)
    revoked: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used: Mapped[float | None] = mapped_column(Float, nullable=True)
    # set at creation (``--expires-in``); the server's token_lifetime_days applies on top of it
    expires: Mapped[float | None] = mapped_column(Float, nullable=True)


class Audit(Base):
    """Who did what to what, and when: submits, kills, user and token changes."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str] = mapped_column(String(256), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
