"""Container images: ``dlapp images build NAME`` (see images/README.md).

Three images build on a Debian machine with no registry:

- ``minimal`` (``dlapp/minimal``): a static busybox (apt ``busybox-static``) with its applets
  as links, ``bash`` a wrapper of busybox's ``ash``. Under a second; the docker tests use it.
- ``python`` (``dlapp/python``): a Debian bookworm rootfs made by ``debootstrap`` (minbase,
  with python3), imported with ``docker import``. Minutes: it downloads Debian packages.
- ``pytorch-cpu`` (``dlapp/pytorch-cpu``, FROM ``python``): the wheels of
  ``images/pytorch-cpu/requirements.txt`` fetched on the host by ``pip download`` (through the
  host's pip configuration), then installed by ``docker build`` with no network.

The others are Dockerfiles under ``images/`` FROM images that need a registry: ``cuda``,
``pytorch``, ``tensorflow``, ``jax``. A build is skipped when the image exists (``force``
rebuilds). ``to_podman`` copies a built image into podman's store (``docker save | podman
load``), for ``runtime: podman``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dlapp.errors import DlappError

IMAGES_DIR = Path(__file__).resolve().parents[3] / "images"  # in a source checkout
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
APP_UID = 1000  # the non-root user the runtime picks when the workspace belongs to root


@dataclass(frozen=True)
class ImageRecipe:
    name: str  # what ``dlapp images build`` takes
    tag: str
    how: str  # "busybox", "debootstrap" or "dockerfile"
    base: str | None = None  # for a Dockerfile: the dlapp image it is FROM, built first


RECIPES = {
    r.name: r
    for r in (
        ImageRecipe("minimal", "dlapp/minimal:latest", "busybox"),
        ImageRecipe("python", "dlapp/python:latest", "debootstrap"),
        ImageRecipe("pytorch-cpu", "dlapp/pytorch-cpu:latest", "wheels", "python"),
        ImageRecipe("cuda", "dlapp/cuda:latest", "dockerfile"),
        ImageRecipe("pytorch", "dlapp/pytorch:latest", "dockerfile", "cuda"),
        ImageRecipe("tensorflow", "dlapp/tensorflow:latest", "dockerfile", "cuda"),
        ImageRecipe("jax", "dlapp/jax:latest", "dockerfile", "cuda"),
    )
}


def image_exists(tag: str, docker: str = "docker") -> bool:
    done = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0


def build(
    name: str,
    docker: str = "docker",
    force: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> tuple[str, bool]:
    """Build image ``name`` (and the dlapp image it is FROM); ``(tag, built)``: ``built`` is
    False when it existed already."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise DlappError(f"unknown image {name!r}; known: {', '.join(RECIPES)}")
    if not force and image_exists(recipe.tag, docker):
        say(f"{recipe.tag} exists (cached); --force rebuilds it")
        return recipe.tag, False
    if recipe.base is not None:
        build(recipe.base, docker, False, say)
    started = time.monotonic()
    say(f"building {recipe.tag} ({recipe.how}) ...")
    if recipe.how == "busybox":
        _import(minimal_rootfs(), recipe.tag, docker, ['CMD ["/bin/sh"]', "ENV PATH=/bin"])
    elif recipe.how == "debootstrap":
        _build_debian(recipe.tag, docker)
    elif recipe.how == "wheels":
        _build_with_wheels(recipe, docker)
    else:
        context = _context(recipe.name)
        _check(
            [docker, "build", "--force-rm", "--tag", recipe.tag, str(context)],
            f"docker build {name}",
        )
    say(f"built {recipe.tag} in {time.monotonic() - started:.1f}s")
    return recipe.tag, True


def to_podman(
    tag: str,
    docker: str = "docker",
    podman: str = "podman",
    force: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> bool:
    """Copy docker's image ``tag`` into podman's store (``docker save | podman load``);
    False when podman has it already (``force`` copies again)."""
    if not force and image_exists(tag, podman):
        say(f"{tag} is in podman's store already")
        return False
    if not image_exists(tag, docker):
        raise DlappError(f"no image {tag} in docker to copy to podman; build it first")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dlapp-image-") as tmp:
        archive = Path(tmp) / "image.tar"
        _check([docker, "save", "--output", str(archive), tag], f"docker save {tag}")
        _check([podman, "load", "--input", str(archive)], f"podman load {tag}")
    say(f"copied {tag} to podman in {time.monotonic() - started:.1f}s")
    return True


def _context(name: str) -> Path:
    context = IMAGES_DIR / name
    if not (context / "Dockerfile").is_file():
        raise DlappError(f"no Dockerfile in {context} (dlapp images build needs a checkout)")
    return context


def _build_with_wheels(recipe: ImageRecipe, docker: str) -> None:
    """``docker build`` of a context holding the wheels of its requirements.txt, downloaded on
    the host first (through the host's pip configuration), for the image's Python (3.11)."""
    source = _context(recipe.name)
    with tempfile.TemporaryDirectory(prefix="dlapp-image-") as tmp:
        context = Path(tmp) / recipe.name
        shutil.copytree(source, context)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
        pip += ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"]
        pip += ["--dest", str(context / "wheels"), "-r", str(context / "requirements.txt")]
        _check(pip, "pip download")
        argv = [docker, "build", "--force-rm", "--tag", recipe.tag, str(context)]
        _check(argv, f"docker build {recipe.name}")


def _check(argv: list[str], what: str, stdin: bytes | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise DlappError(f"{what} failed: " + " | ".join(tail))


def _import(rootfs: bytes, tag: str, docker: str, changes: list[str]) -> None:
    argv = [docker, "import"]
    for change in changes:
        argv += ["--change", change]
    _check([*argv, "-", tag], f"docker import {tag}", stdin=rootfs)


def _static_busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
            if done.returncode != 0 or "not a dynamic executable" in done.stdout + done.stderr:
                return path
    raise DlappError("no static busybox: install it with `apt-get install busybox-static`")


def _add(tar: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"", **kw: object) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 0
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    for key, value in kw.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def minimal_rootfs(busybox: Path | None = None) -> bytes:
    """A tarball of a root filesystem holding a static busybox and its applets (uncompressed)."""
    busybox = busybox or _static_busybox()
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "tmp", "workspace", "dlapp", "proc", "sys", "dev"):
            _add(tar, d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        _add(tar, "bin/busybox", tarfile.REGTYPE, busybox.read_bytes(), mode=0o755)
        for applet in sorted(set(applets) - {"busybox", "bash"}):
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        bash = b'#!/bin/ash\n# busybox ash standing in for bash\nexec /bin/ash "$@"\n'
        _add(tar, "bin/bash", tarfile.REGTYPE, bash, mode=0o755)
        passwd = f"root:x:0:0:root:/root:/bin/sh\napp:x:{APP_UID}:{APP_UID}:app:/tmp:/bin/sh\n"
        group = f"root:x:0:\napp:x:{APP_UID}:\n"
        _add(tar, "etc/passwd", tarfile.REGTYPE, passwd.encode(), mode=0o644)
        _add(tar, "etc/group", tarfile.REGTYPE, group.encode(), mode=0o644)
    return buf.getvalue()


def _build_debian(tag: str, docker: str) -> None:
    if shutil.which("debootstrap") is None:
        raise DlappError("no debootstrap: install it with `apt-get install debootstrap`")
    with tempfile.TemporaryDirectory(prefix="dlapp-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        _check(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                DEBIAN_SUITE,
                str(root),
                DEBIAN_MIRROR,
            ],
            "debootstrap",
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / junk).glob("*.deb"):
                path.unlink()
        (root / "workspace").mkdir(exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        changes = ['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8", "WORKDIR /workspace"]
        argv = [docker, "import"] + [a for c in changes for a in ("--change", c)] + ["-", tag]
        done = subprocess.run(argv, stdin=tar.stdout, capture_output=True, check=False)
        tar.stdout.close()
        if tar.wait() != 0 or done.returncode != 0:
            raise DlappError(f"docker import {tag} failed: {done.stderr.decode().strip()}")
