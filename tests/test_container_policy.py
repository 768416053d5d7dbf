"""The container policy (pure): what a spec may ask of its container, checked at submit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dlapp.config import ContainerPolicy, load_server_settings
from dlapp.errors import Forbidden, SpecError
from dlapp.runtime.policy import check_container, container_problems
from dlapp.spec import AppSpec
from spec_builders import make_spec


def docker_spec(image: str | None = "dlapp/minimal", **container: Any) -> AppSpec:
    return make_spec("c").docker(image).container(**container).build()


ALLOWING = ContainerPolicy(allowed_mounts=("/datasets",), allowed_caps=("SYS_PTRACE",))


def test_a_plain_app_in_an_allowed_image_passes() -> None:
    check_container(docker_spec(), ContainerPolicy())
    check_container(
        docker_spec(mounts=[{"host": "/datasets/a", "path": "/data"}], cap_add=["sys_ptrace"]),
        ALLOWING,
    )


def test_the_process_runtime_is_not_a_container() -> None:
    spec = make_spec("p").image("any/thing").build()
    assert container_problems(spec, ContainerPolicy()) == []


@pytest.mark.parametrize(
    "container,problem",
    [
        ({"privileged": True}, "privileged containers are never allowed"),
        ({"network": "host"}, "the host network is not allowed"),
        ({"cap_add": ["SYS_ADMIN"]}, "capability SYS_ADMIN is not allowed"),
        ({"user": "0"}, "running as root"),
        ({"user": "0:0"}, "running as root"),
        ({"user": "alice"}, "must be UID[:GID]"),
        ({"mounts": [{"host": "/", "path": "/host"}]}, "'/' is never mounted"),
        ({"mounts": [{"host": "/etc", "path": "/e"}]}, "'/etc' is never mounted"),
        ({"mounts": [{"host": "/etc/ssl", "path": "/e"}]}, "'/etc/ssl' is never mounted"),
        ({"mounts": [{"host": "/var/run/docker.sock", "path": "/s"}]}, "never mounted"),
        ({"mounts": [{"host": "/srv/docker.sock", "path": "/s"}]}, "never mounted"),
        ({"mounts": [{"host": "/home/bob", "path": "/b"}]}, "not under an allowed mount"),
        ({"mounts": [{"host": "/datasetsX", "path": "/d"}]}, "not under an allowed mount"),
        ({"mounts": [{"host": "/datasets/a,b", "path": "/d"}]}, "may not hold ','"),
        ({"mounts": [{"host": "/datasets/a", "path": "/workspace/d"}]}, "inside the workspace"),
    ],
)
def test_refused_requests(container: dict[str, Any], problem: str) -> None:
    with pytest.raises(Forbidden, match="container policy: .*" + _re(problem)):
        check_container(docker_spec(**container), ALLOWING)


def _re(text: str) -> str:
    return re.escape(text)


def test_a_symlink_into_a_denied_path_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "etc-link"
    link.symlink_to("/etc")
    policy = ContainerPolicy(allowed_mounts=(str(tmp_path),))
    with pytest.raises(Forbidden, match="never mounted"):
        check_container(docker_spec(mounts=[{"host": str(link), "path": "/x"}]), policy)


def test_images_by_pattern() -> None:
    with pytest.raises(Forbidden, match=r"image 'evil/miner' is not allowed \(allowed: dlapp/\*\)"):
        check_container(docker_spec("evil/miner"), ContainerPolicy())
    check_container(docker_spec("nvcr.io/nvidia/pytorch:24.01"), ContainerPolicy(images=()))
    check_container(docker_spec("reg.lab/ml/jax:1"), ContainerPolicy(images=("reg.lab/ml/*",)))


def test_every_problem_is_listed_at_once() -> None:
    problems = container_problems(docker_spec("evil/x", privileged=True, user="0"), ALLOWING)
    assert len(problems) == 3


def test_a_container_runtime_needs_an_image() -> None:
    with pytest.raises(SpecError, match="runtime docker needs an image"):
        check_container(docker_spec(None), ContainerPolicy())


def test_the_policy_comes_from_server_settings(tmp_path: Path) -> None:
    env = {"DLAPP_CONTAINER": '{"images": ["lab/*"], "allowed_caps": "net_raw", "gpus": "cdi"}'}
    settings = load_server_settings(env=env, home=str(tmp_path))
    assert settings.container.images == ("lab/*",)
    assert settings.container.allowed_caps == ("NET_RAW",)
    assert settings.container_policy.cluster_id  # derived from home: labels this cluster's
    other = load_server_settings(env={}, home=str(tmp_path / "other"))
    assert other.container_policy.cluster_id != settings.container_policy.cluster_id
    assert other.container == ContainerPolicy()


def test_a_spec_round_trips_with_its_container_section() -> None:
    spec = docker_spec(mounts=[{"host": "/datasets/a", "path": "/data"}], cap_add=["CAP_CHOWN"])
    assert spec.container.cap_add == ("CHOWN",)
    assert AppSpec.from_dict(spec.to_dict()) == spec
