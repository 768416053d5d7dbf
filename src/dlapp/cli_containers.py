"""``dlapp images build|list``, ``dlapp shell SPEC`` and ``dlapp run`` (see docs/containers.md).

Registered on the main group by ``dlapp.cli``; tested through ``dlapp.cli.main``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

from dlapp import images
from dlapp.config import default_home, load_server_settings
from dlapp.devshell import hold_gpus, shell_args, shell_spec
from dlapp.errors import DlappError
from dlapp.runtime.docker import docker_problem
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
@click.option("--gpus", type=int, help="GPUs to hold for the shell (default: the spec's)")
@click.option("--print-command", is_flag=True, help="print the docker argv (one per line)")
@click.argument("command", nargs=-1)
def shell(spec_file: Path, gpus: int | None, print_command: bool, command: tuple[str, ...]) -> None:
    """Run SPEC_FILE's image here, interactively, with its workspace mounted (then COMMAND or
    bash). Inside, `dlapp run` submits the mounted workspace with this spec."""
    from dlapp.executor.ray import count_gpus  # Ray is slow to import: only here

    spec = AppSpec.from_file(spec_file)
    settings = load_server_settings()
    policy = settings.container_policy
    check_container(spec.model_copy(update={"runtime": "docker"}), policy)
    if not Path(spec.workspace.path).is_dir():
        raise DlappError(f"the workspace {spec.workspace.path} is not a directory")
    want = spec.resources.gpus if gpus is None else gpus
    total = count_gpus() if want else 0
    with (
        hold_gpus(want, total, default_home() / "shell-gpus") as gpu_ids,
        tempfile.TemporaryDirectory(prefix="dlapp-shell-") as tmp,
    ):
        inner = Path(tmp) / "spec.yaml"
        inner.write_text(shell_spec(spec, policy).to_yaml())
        inner.chmod(0o644)
        Path(tmp).chmod(0o755)
        argv = shell_args(
            spec, policy, inner, gpu_ids, command or ("bash",), f"shell-{os.getpid()}"
        )
        if print_command:
            for arg in argv:
                click.echo(arg)
            return
        problem = docker_problem(policy.docker)
        if problem:
            raise DlappError(f"cannot start the shell: {problem}")
        sys.exit(subprocess.call(argv))


@click.command("run")
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="wait for the app; exit 0 only if it SUCCEEDED")
@click.option("--follow", is_flag=True, help="stream container 0's stdout until the app ends")
def run(spec_file: str | None, wait: bool, follow: bool) -> None:
    """Submit the dev shell's spec ($DLAPP_SPEC) and its mounted workspace: `launch` of it."""
    from dlapp.cli import _launch  # dlapp.cli imports this module: import late

    spec_file = spec_file or os.environ.get("DLAPP_SPEC")
    if not spec_file:
        raise DlappError("not in a dlapp shell ($DLAPP_SPEC is unset): give a SPEC_FILE")
    sys.exit(_launch(spec_file, wait, follow))


def register(cli: click.Group) -> None:
    cli.add_command(images_group)
    cli.add_command(shell)
    cli.add_command(run)
