"""The container policy: what the admin lets apps ask of a container (runtime docker / podman).

``ContainerPolicy`` is the ``container`` section of the server settings (docs/configuration.md);
``check_container`` is the pure check the submit path runs, so that a refused spec is an error
at once and no container is ever created for it. The same policy travels to the node, where
``docker_run_args`` turns it into flags. Safe by default:

- never ``--privileged`` (not even for an admin: there is no setting for it);
- ``--cap-drop ALL``; an app may add back only capabilities in ``allowed_caps``;
- ``--security-opt no-new-privileges``; a non-root user (``user``), root only with
  ``allow_root``. A user is numeric ``UID[:GID]``, read as numbers (``"00"``, ``"1000:0"``
  are root: uid or gid 0); no names, which could resolve to root inside the image;
- no host mounts but paths under ``allowed_mounts``, and never ``/``, ``/etc``, ``/proc``,
  ``/sys``, ``/dev``, ``/boot``, ``/root``, ``/run``, ``/var/run`` or a docker socket, even if
  an admin lists them;
- the default bridge network; ``none`` on request; ``host`` only with ``allow_host_network``;
- images matching one of ``images`` (shell patterns), each a valid image reference (never an
  engine option such as ``--privileged``); ``pull: never`` (default) or ``missing``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlapp.errors import Forbidden, SpecError
from dlapp.spec import AppSpec, canonical_user, parse_user

CONTAINER_RUNTIMES = ("docker", "podman")
# host paths never mounted, whatever the allow list says (each one and everything under it)
DENIED_MOUNTS = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/run",
    "/var/run",
    "/var/lib/docker",
)
_USERNS_RE = re.compile(r"^(host|nomap|(keep-id|auto)(:[\w=,/-]+)?)$")
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
    gpus: Literal["nvidia", "cdi", "none"] = Field(
        default="nvidia",
        description="how assigned GPUs reach a container: --gpus device=... (NVIDIA runtime), "
        "CDI --device nvidia.com/gpu=N, or none (declared GPUs without devices: tests)",
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


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def mount_problem(host: str, policy: ContainerPolicy) -> str | None:
    """Why a host path may not be mounted, or None. Symlinks are resolved first (on the server:
    a node's filesystem is expected to match for the allow-listed shared paths)."""
    if "," in host or "=" in host:
        return f"host path {host!r} may not hold ',' or '='"
    resolved = str(Path(host).resolve()) if Path(host).is_absolute() else host
    for path in dict.fromkeys((host, resolved)):
        if path == "/" or any(_under(path, d) for d in DENIED_MOUNTS) or "docker.sock" in path:
            return f"host path {host!r} is never mounted"
    allowed = [str(PurePosixPath(a)) for a in policy.allowed_mounts]
    if not any(_under(resolved, a) and _under(host, a) for a in allowed):
        listed = ", ".join(allowed) or "none"
        return f"host path {host!r} is not under an allowed mount (allowed: {listed})"
    return None


def image_allowed(image: str, policy: ContainerPolicy) -> bool:
    return not policy.images or any(fnmatch.fnmatchcase(image, p) for p in policy.images)


def container_problems(spec: AppSpec, policy: ContainerPolicy) -> list[str]:
    """Every way ``spec`` breaks ``policy`` (empty: allowed). Pure but for resolving links."""
    if spec.runtime not in CONTAINER_RUNTIMES:
        return []
    c = spec.container
    problems: list[str] = []
    if spec.image is None:
        problems.append(f"runtime {spec.runtime} needs an image")
    elif not image_allowed(spec.image, policy):
        problems.append(
            f"image {spec.image!r} is not allowed (allowed: {', '.join(policy.images)})"
        )
    if c.privileged:
        problems.append("privileged containers are never allowed")
    if c.network == "host" and not policy.allow_host_network:
        problems.append("the host network is not allowed on this cluster")
    for cap in c.cap_add:
        if cap not in policy.allowed_caps:
            allowed = ", ".join(policy.allowed_caps) or "none"
            problems.append(f"capability {cap} is not allowed (allowed: {allowed})")
    for m in c.mounts:
        problem = mount_problem(m.host, policy)
        if problem:
            problems.append(problem)
        if "," in m.path or "=" in m.path:
            problems.append(f"mount target {m.path!r} may not hold ',' or '='")
        if _under(m.path, policy.workspace_path) or _under(m.path, "/dlapp"):
            problems.append(f"mount target {m.path!r} is inside the workspace or /dlapp")
    if c.user is not None:
        problem = user_problem(c.user, policy)
        if problem:
            problems.append(problem)
    return problems


def is_root(user: str) -> bool:
    """Whether ``UID[:GID]`` runs with uid 0 or gid 0 (ValueError if it is no such user)."""
    uid, gid = parse_user(user)
    return uid == 0 or gid == 0


def user_problem(user: str, policy: ContainerPolicy) -> str | None:
    """Why a spec may not run its container as ``user``, or None."""
    try:
        root = is_root(user)
    except ValueError as exc:
        return str(exc)
    if root and not policy.allow_root:
        return f"running as root (container.user {user!r}: uid or gid 0) is not allowed"
    return None


def check_container(spec: AppSpec, policy: ContainerPolicy) -> None:
    """Raise ``Forbidden`` (403) with every problem if the policy refuses ``spec``; a spec that
    cannot name an image at all is a ``SpecError``."""
    problems = container_problems(spec, policy)
    if not problems:
        return
    if problems == [f"runtime {spec.runtime} needs an image"]:
        raise SpecError(problems)
    raise Forbidden("container policy: " + "; ".join(problems))
