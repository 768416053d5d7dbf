"""Hostile spec fields: values a user writes to become root, to smuggle flags into the container
engine's argv, or to make the app's own argv read its script as an option."""

from __future__ import annotations

import pytest

from dlapp import spec as spec_module
from dlapp.config import ContainerPolicy
from dlapp.errors import Forbidden, SpecError
from dlapp.runtime.policy import check_container, container_problems
from dlapp.spec import AppSpec
from spec_builders import SpecBuilder, make_spec

DOCKER = make_spec().docker()
ANY_IMAGE = ContainerPolicy(images=())


def refusal(spec: SpecBuilder, policy: ContainerPolicy) -> str:
    """The message that stops ``spec`` at submit: its validation, else the container policy."""
    try:
        built = spec.build()
    except SpecError as exc:
        return str(exc)
    with pytest.raises(Forbidden) as info:
        check_container(built, policy)
    return str(info.value)


# -- container.user: root by another spelling ---------------------------------------------------


@pytest.mark.parametrize(
    "user",
    ["00", "000", "00:0", "0:00", "1000:0", "1000:00", "0:1000", " 0", "0 "],
)
def test_root_by_another_spelling_of_zero_is_refused(user: str) -> None:
    assert "root" in refusal(DOCKER.user(user), ContainerPolicy())


@pytest.mark.parametrize(
    "user",
    [
        "+0",
        "+0:+0",
        "1000:+0",
        "root",
        "root:root",
        "1000:root",
        "daemon",
        "-1",
        "0x0",
        "1e3",
        "\u0660",  # ARABIC-INDIC DIGIT ZERO: a digit to regular expressions, not to docker
        "1000:\u0660",
        "4294967296",  # 2**32: zero once cut to 32 bits
        "2147483648",
        "1000:1000:1000",
        "",
    ],
)
def test_a_user_that_is_not_a_plain_uid_is_refused(user: str) -> None:
    assert "UID[:GID]" in refusal(DOCKER.user(user), ContainerPolicy())


@pytest.mark.parametrize(
    "user,canonical",
    [("00", "0"), ("00:0", "0:0"), ("0001000", "1000"), ("01000:0100", "1000:100")],
)
def test_the_user_is_read_as_numbers_and_kept_canonical(user: str, canonical: str) -> None:
    spec = DOCKER.user(user).build()
    assert spec.container.user == canonical
    assert AppSpec.from_dict(spec.to_dict()) == spec


def test_root_by_any_spelling_passes_where_the_admin_allows_root() -> None:
    policy = ContainerPolicy(allow_root=True)
    for user in ("00", "0:0", "1000:0"):
        assert container_problems(DOCKER.user(user).build(), policy) == []


def test_a_plain_user_and_group_pass() -> None:
    assert container_problems(DOCKER.user("1000:1000").build(), ContainerPolicy()) == []


@pytest.mark.parametrize("user,canonical", [("00", "0"), ("00:0", "0:0"), ("01000:0", "1000:0")])
def test_the_admins_policy_user_is_canonical_too(user: str, canonical: str) -> None:
    assert ContainerPolicy(user=user).user == canonical


# -- image: a flag in disguise -------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "--privileged",
        "-v/:/host",
        "--volume=/:/host",
        "dlapp/minimal --privileged",
        "dlapp/minimal\n--privileged",
        "dlapp/mini\tmal",
        "dlapp/Minimal",  # repositories are lowercase
        "dlapp//minimal",
        "dlapp/minimal:",
        "dlapp/minimal:-x",
        "dlapp/minimal@sha256:short",
        "/dlapp/minimal",
        "dlapp/minimal;id",
        "$(id)",
        "a" * 300,
    ],
)
def test_an_image_that_is_no_image_reference_is_refused(image: str) -> None:
    with pytest.raises(SpecError, match=r"image .* is not a valid image reference"):
        DOCKER.image(image).build()
    assert spec_module.image_problem(image) is not None


@pytest.mark.parametrize(
    "image",
    [
        "dlapp/minimal",
        "dlapp/pytorch-cpu:latest",
        "busybox",
        "nvcr.io/nvidia/pytorch:24.01-py3",
        "localhost:5000/team/app_x:v1.2",
        "reg.lab/ml/jax@sha256:" + "ab" * 32,
        "reg.lab/ml/jax:1@sha256:" + "ab" * 32,
        "naver/c3_dl-caffe",
        "a__b/c--d.e",
        "Registry.Example.COM:443/x/y",
    ],
)
def test_real_image_references_pass(image: str) -> None:
    assert DOCKER.image(image).build().image == image


def test_the_process_runtime_refuses_a_flag_for_an_image_too() -> None:
    with pytest.raises(SpecError, match="not a valid image reference"):
        make_spec().image("--privileged").build()


def test_an_empty_image_is_no_image() -> None:
    assert make_spec().image("").build().image is None


# -- env: values that would break the env file -----------------------------------------------------


@pytest.mark.parametrize("value", ["a\nB=b", "a\rb", "a\r", "a\x00b", "\n"])
def test_an_env_value_with_a_line_break_or_nul_is_refused(value: str) -> None:
    with pytest.raises(SpecError, match=r"env A: .*line break or NUL"):
        make_spec().env(A=value).build()


def test_env_values_with_spaces_quotes_and_equals_pass() -> None:
    env = {"A": "two words", "B": "'quoted'", "C": 'x="y"', "D": "a=b=c", "E": "#not a comment"}
    assert make_spec().env(**env).build().env == env


# -- entry script: an option in disguise -----------------------------------------------------------


@pytest.mark.parametrize("script", ["-c.sh", "--help.py", "-", "+O.sh", "-x"])
def test_an_entry_script_named_like_an_option_is_refused(script: str) -> None:
    with pytest.raises(SpecError, match=r"entry\.script: .*starts with"):
        make_spec().script(script).build()


def test_a_dash_inside_a_script_path_is_fine() -> None:
    assert make_spec().script("bin/-c.sh").build().entry.script == "bin/-c.sh"


# -- unknown keys under container ----------------------------------------------------------------


def test_an_unknown_container_key_lists_the_container_keys() -> None:
    with pytest.raises(SpecError) as info:
        DOCKER.container(usr="1000").build()
    (problem,) = info.value.problems
    assert "unknown key 'usr' in container" in problem
    assert "cap_add, mounts, network, privileged, user" in problem


def test_an_unknown_mount_key_lists_the_mount_keys() -> None:
    with pytest.raises(SpecError) as info:
        DOCKER.container(mounts=[{"host": "/d", "path": "/d", "ro": True}]).build()
    (problem,) = info.value.problems
    assert "unknown key 'ro' in mounts" in problem
    assert "host, path, read_only" in problem
