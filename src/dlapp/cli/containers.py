"""``dlapp images build|list``, ``dlapp shell SPEC`` and ``dlapp run`` (see docs/containers.md).

Registered on the main group by ``dlapp.cli.main``; tested through its ``main``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

from dlapp.cli import images, relay
from dlapp.cli.common import launch_app
from dlapp.cli.devshell import (
    ShellFiles,
    hold_gpus,
    image_path,
    shell_args,
    shell_spec,
    shell_user,
)
from dlapp.config import default_home, load_server_settings
from dlapp.errors import DlappError
from dlapp.runtime.docker import docker_problem, node_gpu_policy
from dlapp.runtime.gpus import count_gpus
from dlapp.runtime.policy import check_container
from dlapp.spec import AppSpec

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@click.group("images")
def images_group() -> None:
    """Container images for the docker runtime (images/README.md)."""


@images_group.command("build")
@click.argument("name", type=click.Choice(sorted(images.RECIPES)))
@click.option("--force", is_flag=True, help="rebuild even if the image exists")
@click.option("--podman", is_flag=True, help="then copy it into podman's store (runtime podman)")
def images_build(name: str, force: bool, podman: bool) -> None:
    """Build image NAME (and the dlapp image it is FROM); skipped when it exists."""
    policy = load_server_settings().container
    tag, built = images.build(name, policy.docker, force, say=out.print)
    if podman:
        images.to_podman(tag, policy.docker, policy.podman, force or built, say=out.print)
    out.print(tag)


@images_group.command("list")
def images_list() -> None:
    """The images dlapp knows how to build, and whether each is here."""
    docker = load_server_settings().container.docker
    for name, recipe in images.RECIPES.items():
        here = "built" if images.image_exists(recipe.tag, docker) else "-"
        out.print(f"{name:12} {recipe.tag:28} {recipe.how:11} {here}")


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--gpus", type=click.IntRange(min=0), help="GPUs to hold for the shell (default: the spec's)"
)
@click.option("--print-command", is_flag=True, help="print the docker argv (one per line)")
@click.argument("command", nargs=-1)
def shell(spec_file: Path, gpus: int | None, print_command: bool, command: tuple[str, ...]) -> None:
    """Run SPEC_FILE's image here, interactively, with its workspace mounted (then COMMAND or
    bash), as you. Inside, `dlapp run` submits the workspace with this spec, through this
    process: no token enters the container (also: dlapp status, list, logs, kill, ...)."""
    spec = AppSpec.from_file(spec_file)
    settings = load_server_settings()
    policy = settings.container_policy
    check_container(spec.model_copy(update={"runtime": "docker"}), policy)
    workspace = Path(spec.workspace.path)
    if not workspace.is_dir():
        raise DlappError(f"the workspace {workspace} is not a directory")
    real = count_gpus()
    total = real or settings.gpus or 0  # where NVML finds none: the GPUs the settings declare
    want = math.ceil(spec.resources.gpus) if gpus is None else gpus
    if want and not total and gpus is None:
        err.print(
            f"this machine has no GPUs (NVML finds none, the settings declare none): the shell "
            f"gets none; `dlapp run` still asks the cluster for the spec's "
            f"{spec.resources.gpus:g}"
        )
        want = 0
    policy = node_gpu_policy(policy, lambda: real)  # declared GPUs: no device to request
    user = shell_user(spec, policy, os.getuid(), os.getgid())
    uid, _, gid = user.partition(":")
    with (
        hold_gpus(want, total, default_home() / "shell-gpus") as gpu_ids,
        tempfile.TemporaryDirectory(prefix="dlapp-shell-") as tmp,
    ):
        Path(tmp).chmod(0o755)
        inner = Path(tmp) / "spec.yaml"
        inner.write_text(shell_spec(spec, policy).to_yaml())
        inner.chmod(0o644)
        relay_dir = Path(tmp) / "relay"
        relay.prepare(relay_dir, int(uid), int(gid or uid))
        files = ShellFiles(
            inner, relay_dir, relay.shim_path(relay_dir), image_path(spec.image, policy.docker)
        )
        argv = shell_args(
            spec, policy, files, gpu_ids, user, command or ("bash",), f"shell-{os.getpid()}"
        )
        if print_command:
            for arg in argv:
                click.echo(arg)
            return
        problem = docker_problem(policy.docker)
        if problem:
            raise DlappError(f"cannot start the shell: {problem}")
        place = relay.ShellPlace(spec_file.resolve(), workspace.resolve(), policy.workspace_path)
        with relay.Relay(relay_dir, int(uid), place):
            code = subprocess.call(argv)
    sys.exit(code)


@click.command("run")
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="wait for the app; exit 0 only if it SUCCEEDED")
@click.option("--follow", is_flag=True, help="stream container 0's stdout until the app ends")
def run(spec_file: str | None, wait: bool, follow: bool) -> None:
    """Submit the dev shell's spec ($DLAPP_SPEC) and its mounted workspace: `launch` of it."""
    spec_file = spec_file or os.environ.get("DLAPP_SPEC")
    if not spec_file:
        raise DlappError("not in a dlapp shell ($DLAPP_SPEC is unset): give a SPEC_FILE")
    sys.exit(launch_app(spec_file, wait, follow))


def register(cli: click.Group) -> None:
    cli.add_command(images_group)
    cli.add_command(shell)
    cli.add_command(run)
