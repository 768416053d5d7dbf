"""Settings: loaded once at start (file, then environment, then explicit overrides), passed down.

Every server setting can be set in a YAML file (``--config``, or ``$DLAPP_HOME/server.yaml``)
or through the environment variable ``DLAPP_<NAME>`` in upper case (``DLAPP_PORT=9000``).
The client reads ``DLAPP_SERVER`` / ``DLAPP_TOKEN`` or ``~/.config/dlapp/client.yaml`` (which
must be readable by its owner only when it holds a token).
See docs/configuration.md for the full list.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

# the client's settings live in a module of their own (callers may still find them here)
from dlapp.client_config import ClientSettings as ClientSettings
from dlapp.client_config import build, env_overrides, read_yaml
from dlapp.client_config import client_config_path as client_config_path
from dlapp.client_config import default_home as default_home
from dlapp.client_config import load_client_settings as load_client_settings

_USERNS_RE = re.compile(r"^(host|nomap|(keep-id|auto)(:[\w=,/-]+)?)$")
_OCI_RUNTIME_RE = re.compile(r"^(auto|[A-Za-z0-9_.+][\w.+-]*|/[\w./+-]+)$")
Engine = Literal["docker", "podman"]


class ContainerPolicy(BaseModel):
    """The ``container`` section of the server settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images: tuple[str, ...] = Field(
        default=("dlapp/*",), description="image name patterns apps may use (fnmatch); empty: any"
    )
    pull: Literal["never", "missing"] = Field(
        default="never", description="pull an image that is not on the node: never, or when missing"
    )
    user: str = Field(
        default="auto",
        description="UID:GID apps run as; auto: the workspace owner, or 1000:1000 when that is "
        "root (the workspace is then given to 1000:1000)",
    )
    allow_root: bool = Field(
        default=False, description="let a spec ask for container.user with uid or gid 0"
    )
    allowed_caps: tuple[str, ...] = Field(
        default=(), description="capabilities a spec may add back (all are dropped)"
    )
    allowed_mounts: tuple[str, ...] = Field(
        default=(),
        description="host directories a spec may bind-mount (they and what is under them)",
    )
    network: Literal["bridge", "none"] = Field(
        default="bridge", description="the network of a spec that asks for none in particular"
    )
    allow_host_network: bool = Field(
        default=False, description="let a spec ask for the host network"
    )
    gpus: Literal["auto", "nvidia", "cdi", "none"] = Field(
        default="auto",
        description="how assigned GPUs reach a container: --gpus device=... (nvidia: the NVIDIA "
        "container toolkit), CDI --device nvidia.com/gpu=N (cdi), or none (no device: GPUs "
        "declared on a machine without any); auto: nvidia on a node where NVML finds GPUs, "
        "none on one where it finds none",
    )
    pids_limit: int = Field(
        default=4096, ge=16, description="processes per container (--pids-limit)"
    )
    workspace_path: str = Field(default="/workspace", description="where the workspace is mounted")
    docker: str = Field(default="docker", description="the docker command (runtime docker)")
    podman: str = Field(default="podman", description="the podman command (runtime podman)")
    userns: str = Field(
        default="host",
        description="podman --userns: host (rootful: none of its own), keep-id (rootless: "
        "the node user keeps its UID inside), auto, nomap",
    )
    oci_runtime: str = Field(
        default="auto",
        description="podman --runtime: auto (runc on a node whose cgroups are hybrid, v1 "
        "controllers beside a v2 hierarchy, which crun refuses; else podman's own default), "
        "or a runtime's name or path (crun, runc, /usr/bin/runsc)",
    )
    cluster_id: str | None = Field(
        default=None,
        description="label dlapp.cluster of this server's containers (default: from home)",
    )

    @field_validator("allowed_caps", mode="before")
    @classmethod
    def _caps(cls, v: object) -> object:
        if isinstance(v, str):
            v = [c for c in v.split(",") if c]
        if isinstance(v, list | tuple):
            return tuple(str(c).strip().upper().removeprefix("CAP_") for c in v)
        return v

    @field_validator("images", "allowed_mounts", mode="before")
    @classmethod
    def _from_env(cls, v: object) -> object:
        return tuple(p for p in v.split(",") if p) if isinstance(v, str) else v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        from dlapp.spec import canonical_user  # the spec's models: not for the client's settings

        if v == "auto":
            return v
        try:
            return canonical_user(v)
        except ValueError:
            raise ValueError(f"user must be 'auto' or UID[:GID], not {v!r}") from None

    @field_validator("userns")
    @classmethod
    def _userns(cls, v: str) -> str:
        if not _USERNS_RE.match(v):
            raise ValueError(f"userns must be host, keep-id, auto or nomap[:OPTIONS], not {v!r}")
        return v

    @field_validator("oci_runtime")
    @classmethod
    def _oci_runtime(cls, v: str) -> str:
        if not _OCI_RUNTIME_RE.match(v):
            raise ValueError(f"oci_runtime must be auto or a runtime's name or path, not {v!r}")
        return v

    @field_validator("workspace_path")
    @classmethod
    def _workspace(cls, v: str) -> str:
        if not PurePosixPath(v).is_absolute() or v == "/":
            raise ValueError(f"workspace_path must be an absolute path other than /, not {v!r}")
        return v

    def command(self, engine: Engine) -> str:
        """The CLI of ``engine`` on the node."""
        return self.podman if engine == "podman" else self.docker

    def for_home(self, home: Path) -> ContainerPolicy:
        """This policy with ``cluster_id`` set (derived from the server's home if unset)."""
        if self.cluster_id:
            return self
        digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
        return self.model_copy(update={"cluster_id": digest})


class StorageProfile(BaseModel):
    """A store's endpoint and credentials, chosen by URL (docs/data.md); never shown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: str = Field(description="fsspec protocol: s3, gs, sftp, hdfs, webhdfs, file")
    urls: tuple[str, ...] = Field(
        (), description="URL prefixes served; empty: the default profile of its protocol"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, repr=False, description="keyword arguments of the filesystem"
    )


def _check_hdfs_target(what: str, url: str) -> None:
    """An hdfs_endpoint or hdfs_map target is a URL naming its store (not another hdfs:///)."""
    parsed = urlparse(url)
    if not parsed.scheme or (parsed.scheme != "file" and not parsed.netloc):
        raise ValueError(
            f"{what}: {url!r} is not a store URL such as webhdfs://namenode:9870, "
            "hdfs://namenode:8020 or s3://bucket/prefix/"
        )
    if parsed.password:
        raise ValueError(f"{what}: credentials do not belong in a URL: storage_profiles hold them")


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(default_factory=default_home, description="state directory")
    host: str = Field("127.0.0.1", description="address the API listens on")
    port: int = Field(8642, ge=0, le=65535, description="API port; 0 picks a free one")
    public_url: str | None = Field(
        None, description="URL printed to users (default: http://host:port)"
    )
    db_url: str | None = Field(None, description="SQLAlchemy URL (default: SQLite under home)")
    artifact_dir: Path | None = Field(
        None, description="workspaces and finished logs (default: home/artifacts)"
    )
    work_dir: Path | None = Field(
        None, description="node-local app workspaces (default: home/work)"
    )
    checkpoint_dir: Path | None = Field(
        None,
        description="apps' checkpoint directories, kept across attempts (default: "
        "artifacts/checkpoints; work/checkpoints for a root server); see docs/security.md",
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join; unset starts an embedded one"
    )
    ray_node_ip: str | None = Field(
        None,
        description="this machine's Ray address: what its Ray processes advertise and listen on "
        "(default: 127.0.0.1 for the embedded cluster, Ray's choice with ray_address)",
    )
    cpus: float | None = Field(None, description="embedded cluster: CPUs to declare (default: all)")
    gpus: int | None = Field(
        None, description="embedded cluster: GPUs to declare (default: found with NVML)"
    )
    object_store_mb: int = Field(512, description="embedded cluster: Ray object store size, MiB")
    ray_require_auth: bool = Field(
        True, description="refuse to run Ray with token authentication off (RAY_AUTH_MODE)"
    )
    softkill_grace_s: float = Field(30.0, ge=0, description="softkill: SIGTERM to SIGKILL delay")
    queues_file: Path | None = Field(
        None, description="queue tree YAML, reloaded when it changes (default: home/queues.yaml)"
    )
    schedule_interval_s: float = Field(0.5, gt=0, description="scheduler cycle period")
    log_ship_interval_s: float = Field(
        2.0,
        gt=0,
        description="how often running containers' new log bytes go to the kept logs, and "
        "their staging progress to the app's events",
    )
    lease_ttl_s: float = Field(
        10.0, gt=0, description="scheduler lease: a stalled leader is replaced after this long"
    )
    start_timeout_s: float = Field(
        120.0, gt=0, description="a container whose supervisor is not up after this is lost"
    )
    start_path: Literal["agent", "actor"] = Field(
        "agent",
        description="how containers start: through each node's long-lived agent actor "
        "(agent), or a placement group and a supervisor actor per container (actor)",
    )
    warm_workers: bool = Field(
        True, description="keep an idle Ray worker on a node for its next supervisor (actor path)"
    )
    ray_head_timeout_s: float = Field(
        20.0,
        gt=0,
        description="the Ray head unreachable this long: the server restarts (docs/nodes.md)",
    )
    max_upload_mb: int = Field(2048, ge=1, description="largest workspace tarball accepted")
    workspace_max_files: int = Field(100_000, ge=1, description="files per workspace")
    workspace_max_mb: int = Field(4096, ge=1, description="uncompressed workspace size")
    admin_user: str | None = Field(
        None, description="name of the first admin, made on a fresh store (default: login name)"
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) of the API: with tls_key, serve https"
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="reverse proxies (addresses, networks) whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty: none",
    )
    token_lifetime_days: float | None = Field(
        None, gt=0, description="a token stops working this long after it was made; unset: never"
    )
    submit_rate_per_min: float = Field(
        60.0, ge=0, description="submissions per user per minute (token bucket); 0: no limit"
    )
    max_pending_per_user: int = Field(
        1000, ge=0, description="ACCEPTED apps one user may have waiting; 0: no limit"
    )
    max_array_size: int = Field(
        10_000,
        ge=1,
        description="members one array (or sweep) may have; each counts as an app waiting "
        "against max_pending_per_user and the queue's limit",
    )
    max_pending_per_queue: int = Field(
        10_000, ge=0, description="ACCEPTED apps a leaf queue may hold without its own max_pending"
    )
    api_threads: int = Field(
        32,
        ge=2,
        le=1024,
        description="worker threads for the API's blocking work (the store, the executor); the "
        "store's connection pool is sized from it and max_requests",
    )
    max_requests: int = Field(
        64, ge=2, le=4096, description="API requests served at once; more wait, then 503"
    )
    request_wait_s: float = Field(
        2.0, ge=0, description="how long a request waits for a slot before its 429 or 503"
    )
    max_requests_per_user: int = Field(
        8,
        ge=1,
        description="API requests one user may have in flight; more wait request_wait_s, then "
        "429 (below api_threads and max_requests, so that no user holds them all)",
    )
    max_follows_per_user: int = Field(
        8, ge=1, description="log follows (logs?follow=true) one user may hold open; more: 429"
    )
    storage_profiles: dict[str, StorageProfile] = Field(
        default_factory=dict,
        description="named storage profiles (endpoints, credentials); see docs/data.md",
    )
    file_roots: tuple[Path, ...] | None = Field(
        None,
        description="local paths data URLs may use (unset: all on a loopback-only embedded "
        "cluster, none otherwise); see docs/data.md",
    )
    hdfs_endpoint: str | None = Field(
        None,
        description="the store serving hdfs:/// paths (hdfs=/user/... in dl_app.properties): "
        "webhdfs://namenode:9870 (no JVM), hdfs://namenode:8020, or another store's URL "
        "prefix; unset: such paths are refused; see docs/data.md#hdfs",
    )
    hdfs_map: dict[str, str] = Field(
        default_factory=dict,
        description="hdfs:/// path prefixes served by other URL prefixes, the longest prefix "
        "winning over hdfs_endpoint ({'/user/': 's3://lab-hdfs/user/'}); see docs/data.md#hdfs",
    )
    cache_dir: Path | None = Field(None, description="node-local input cache (default: home/cache)")
    cache_max_mb: int = Field(10240, ge=0, description="input cache size; 0: no cache")
    verify_checksums: bool = Field(
        True, description="check downloaded inputs against the store's checksum; docs/data.md"
    )
    staging_transfers: int = Field(
        8, ge=1, le=64, description="files of one input staged at once (1: one after another)"
    )
    gpu_sampler: str = Field(
        "nvml",
        pattern=r"^(nvml|none|test-file:.+)$",
        description="how nodes read GPU utilisation: nvml, none, or test-file:<path> (tests only)",
    )
    gpu_sample_interval_s: float = Field(
        10.0, gt=0, description="GPU utilisation sampling period on the nodes, and its polling"
    )
    placement: str = Field(
        "fgd",
        description="how the scheduler chooses a container's node and devices: fgd "
        "(fragmentation-aware: keeps whole GPUs and nodes free for the waiting and running "
        "mix), pack (fewest free GPUs, then CPUs), best-fit, first-fit",
    )
    gpu_idle_below: float = Field(
        5.0, ge=0, le=100, description="a GPU under this utilisation (percent) is idle"
    )
    gpu_idle_after_s: float = Field(
        3600.0, gt=0, description="an app whose GPUs all stay idle this long is flagged"
    )
    timeseries_interval_s: float = Field(
        60.0, gt=0, description="period of the per-queue samples the dashboard plots"
    )
    timeseries_retention_days: float = Field(
        14.0, gt=0, description="per-queue samples older than this are deleted"
    )
    tenancy: Literal["auto", "multi", "single"] = Field(
        "auto",
        description="auto: apps run as the server's user while the store holds one user, as "
        "their users' own Unix accounts from the second on; multi: always as their accounts; "
        "single: always as the server's user, for users who all trust each other with the "
        "server's data (never on a shared cluster; docs/security.md)",
    )
    app_uid_range: tuple[int, int] = Field(
        (200_000, 299_999),
        description="uids (and gids) of the Unix accounts made for dlapp users who have none",
    )
    app_account_prefix: str = Field(
        "dlapp-",
        pattern=r"^[a-z_][a-z0-9_-]{0,15}$",
        description="name prefix of the Unix accounts made for dlapp users",
    )
    map_unix_accounts: bool = Field(
        True,
        description="run a user's apps as the existing Unix account of the same name (uid >= "
        "1000) rather than a made one",
    )
    runtimes: tuple[str, ...] | None = Field(
        None,
        description="runtimes apps may use on this cluster (unset: all; queues may narrow it)",
    )
    container: ContainerPolicy = Field(
        default_factory=lambda: ContainerPolicy(),
        description="container runtime policy (images, user, caps, mounts, network, GPUs); "
        "see docs/configuration.md#containers",
    )

    @field_validator("placement")
    @classmethod
    def _placement(cls, v: str) -> str:
        from dlapp.scheduler.snapshot import PLACEMENTS  # pure: the scheduler's own names

        if v not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, not {v!r}")
        return v

    @field_validator("storage_profiles", mode="before")
    @classmethod
    def _profiles_from_json(cls, v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v

    @field_validator("container", mode="before")
    @classmethod
    def _container_from_json(cls, v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v

    @field_validator("hdfs_map", mode="before")
    @classmethod
    def _hdfs_map_from_json(cls, v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v

    @field_validator("hdfs_endpoint")
    @classmethod
    def _an_hdfs_endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            _check_hdfs_target("hdfs_endpoint", v)
        return v

    @field_validator("hdfs_map")
    @classmethod
    def _an_hdfs_map(cls, v: dict[str, str]) -> dict[str, str]:
        for prefix, target in v.items():
            if not prefix.startswith("/") or ".." in PurePosixPath(prefix).parts:
                raise ValueError(
                    f"hdfs_map: {prefix!r} is not an absolute HDFS path prefix (such as /user/)"
                )
            _check_hdfs_target(f"hdfs_map[{prefix!r}]", target)
        return v

    @field_validator("app_uid_range", mode="before")
    @classmethod
    def _uid_range_from_env(cls, v: object) -> object:
        return tuple(v.replace("-", ",").split(",")) if isinstance(v, str) else v

    @field_validator("app_uid_range")
    @classmethod
    def _a_uid_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1000 <= v[0] <= v[1] < 2**31 - 1:
            raise ValueError(f"{list(v)} is not a uid range [first, last] with 1000 <= first")
        return v

    @field_validator("runtimes", mode="before")
    @classmethod
    def _runtimes_from_env(cls, v: object) -> object:
        return tuple(r.strip() for r in v.split(",") if r.strip()) if isinstance(v, str) else v

    @field_validator("ray_node_ip")
    @classmethod
    def _an_ip_address(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(f"{v!r} is not an IP address (such as 10.0.0.7)") from None
        return v

    @field_validator("file_roots", mode="before")
    @classmethod
    def _roots_from_env(cls, v: object) -> object:
        return tuple(p for p in v.split(os.pathsep) if p) if isinstance(v, str) else v

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies_from_env(cls, v: object) -> object:
        return tuple(p.strip() for p in v.split(",") if p.strip()) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _fair_request_limits(self) -> ServerSettings:
        if self.max_requests_per_user >= min(self.api_threads, self.max_requests):
            raise ValueError(
                f"max_requests_per_user ({self.max_requests_per_user}) must be below api_threads "
                f"({self.api_threads}) and max_requests ({self.max_requests}): one user's "
                "requests may not hold every worker"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both, or neither")
        return self

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'dlapp.db'}"

    @property
    def queues_path(self) -> Path:
        return self.queues_file or self.home / "queues.yaml"

    @property
    def artifacts(self) -> Path:
        return self.artifact_dir or self.home / "artifacts"

    @property
    def work(self) -> Path:
        """Where apps' workspaces live on the nodes. Apps' accounts must be able to pass
        through its parents, which a root server's home (under /root) does not allow: a root
        server keeps them under /var/lib/dlapp, one directory per data dir."""
        if self.work_dir is not None:
            return self.work_dir
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            tag = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:16]
            return Path("/var/lib/dlapp/work") / tag
        return self.home / "work"

    @property
    def checkpoints(self) -> Path:
        """Where each app's checkpoint directory is kept across attempts. Apps' accounts must
        reach theirs, so a root server (whose artifacts stay its own) keeps them beside the
        workspaces unless ``checkpoint_dir`` says where (a path every node sees, for them to
        outlive a node)."""
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            return self.work / "checkpoints"
        return self.artifacts / "checkpoints"

    @property
    def cache(self) -> Path:
        return self.cache_dir or self.home / "cache"

    @property
    def container_policy(self) -> ContainerPolicy:
        """``container`` with its cluster label set (derived from ``home`` unless given)."""
        return self.container.for_home(self.home)

    @property
    def token_lifetime_s(self) -> float | None:
        return None if self.token_lifetime_days is None else self.token_lifetime_days * 86400.0

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert is not None else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"


def load_server_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] = os.environ,
    **overrides: Any,
) -> ServerSettings:
    values: dict[str, Any] = {}
    home = Path(overrides["home"]) if overrides.get("home") else default_home(env)
    path = config_file or home / "server.yaml"
    if config_file is not None or path.exists():
        values.update(read_yaml(path))
    values.update(env_overrides(ServerSettings.model_fields, env))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build(ServerSettings, values, str(path))
