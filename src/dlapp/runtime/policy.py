"""The container policy: what the admin lets apps ask of a container (runtime docker / podman).

``config.ContainerPolicy`` is the ``container`` section of the server settings
(docs/configuration.md); ``check_container`` is the pure check the submit path runs, so that a
refused spec is an error at once and no container is ever created for it. The same policy
travels to the node, where ``docker_run_args`` turns it into flags. Safe by default:

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
from pathlib import Path, PurePosixPath

from dlapp.config import ContainerPolicy
from dlapp.errors import Forbidden, SpecError
from dlapp.spec import AppSpec, parse_user

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
