"""GPU requests in the app spec: whole GPUs, fractions, MIG instances and GPU models; each
written in YAML and in the reference properties, refused with the problem named, and
round-tripped."""

from __future__ import annotations

from typing import Any

import pytest

from dlapp.errors import SpecError
from dlapp.spec import AppSpec
from spec_builders import make_spec


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        AppSpec.from_dict(data)
    return info.value.problems


def roundtrip(spec: AppSpec) -> AppSpec:
    return AppSpec.from_dict(spec.to_dict())


def test_a_fraction_of_a_gpu_is_kept_and_round_trips() -> None:
    spec = make_spec().gpus(0.25).build()

    assert spec.resources.gpus == 0.25
    assert spec.resources.gpu_share == 0.25
    assert spec.to_dict()["resources"]["gpus"] == 0.25
    assert roundtrip(spec) == spec


def test_whole_gpus_stay_whole_numbers() -> None:
    spec = make_spec().gpus(2.0).build()

    assert spec.resources.gpus == 2
    assert spec.to_dict()["resources"]["gpus"] == 2
    assert isinstance(spec.to_dict()["resources"]["gpus"], int)


@pytest.mark.parametrize(
    ("gpus", "problem"),
    [
        (1.5, "1.5 GPUs: a fraction must be below 1 (one shared GPU); more than one GPU must"),
        (0.0001, "a fraction of a GPU is given in thousandths (0.001 to 0.999), not 0.0001"),
        (-0.5, "resources.gpus: Input should be greater than or equal to 0"),
        (65, "resources.gpus: Input should be less than or equal to 64"),
        (True, "gpus must be a number such as 1, 2 or 0.5, not True"),
        ("half", "gpus must be a number such as 1, 2 or 0.5, not 'half'"),
    ],
)
def test_bad_gpu_amounts_are_refused_naming_the_problem(gpus: object, problem: str) -> None:
    (found,) = problems(make_spec().gpus(gpus).data())

    assert problem in found


def test_mig_instances_are_asked_for_by_profile_and_round_trip() -> None:
    spec = make_spec().gpus({"mig": "1G.18GB", "count": 2}).build()

    assert spec.resources.mig == "1g.18gb"
    assert spec.resources.gpus == 2
    assert spec.resources.gpu_share == pytest.approx(2 / 7)
    assert spec.to_dict()["resources"]["gpus"] == {"mig": "1g.18gb", "count": 2}
    assert roundtrip(spec) == spec


def test_mig_count_defaults_to_one() -> None:
    assert make_spec().gpus({"mig": "3g.71gb"}).build().resources.gpus == 1


@pytest.mark.parametrize(
    ("gpus", "problem"),
    [
        ({"mig": "half"}, "MIG profile 'half' must look like 1g.18gb, 2g.35gb, 3g.71gb"),
        ({"mig": "1g.18gb", "count": 0}, "gpus.count must be a whole number of MIG instances"),
        ({"mig": "1g.18gb", "size": 1}, "unknown key(s) ['size']"),
        ({"count": 1}, "mig is missing"),
    ],
)
def test_bad_mig_requests_are_refused_naming_the_problem(gpus: object, problem: str) -> None:
    (found,) = problems(make_spec().gpus(gpus).data())

    assert problem in found


def test_mig_is_not_a_resources_key_of_its_own() -> None:
    (found,) = problems(make_spec().resources(gpus=1, mig="1g.18gb").data())

    assert "write MIG instances as gpus: {mig: 1g.18gb, count: 1}" in found


def test_gpu_types_are_a_list_or_a_string_and_round_trip() -> None:
    listed = make_spec().resources(gpus=1, gpu_type=["H100", "A100", "h100"]).build()
    written = make_spec().resources(gpus=1, gpu_type="H100, A100").build()

    assert listed.resources.gpu_type == ("H100", "A100")  # repeats (any case) dropped
    assert written.resources.gpu_type == ("H100", "A100")
    assert listed.to_dict()["resources"]["gpu_type"] == ["H100", "A100"]
    assert roundtrip(listed) == listed


def test_gpu_type_without_gpus_is_refused() -> None:
    (found,) = problems(make_spec().resources(gpu_type=["A100"]).data())

    assert "gpu_type ['A100'] asks for GPU models, but gpus is 0" in found


def test_a_bad_gpu_model_name_is_refused() -> None:
    (found,) = problems(make_spec().resources(gpus=1, gpu_type=["H100; rm"]).data())

    assert "'H100; rm' is not a GPU model name" in found


def test_no_gpu_type_leaves_the_native_form_as_before() -> None:
    assert "gpu_type" not in make_spec().gpus(1).build().to_dict()["resources"]


def test_the_reference_properties_take_fractions_models_and_mig() -> None:
    text = "[application]\nappname=a\nuser_shell_script=r.sh\ngpus=0.5\ngpu_type=A100 H100\n"
    spec = AppSpec.from_properties(text)
    assert spec.resources.gpus == 0.5
    assert spec.resources.gpu_type == ("A100", "H100")

    mig = AppSpec.from_properties("[application]\nappname=a\nuser_shell_script=r.sh\nmig=1g.18gb\n")
    assert (mig.resources.mig, mig.resources.gpus) == ("1g.18gb", 1)

    with pytest.raises(SpecError, match="with mig, gpus is the number of MIG instances"):
        AppSpec.from_properties(
            "[application]\nappname=a\nuser_shell_script=r.sh\nmig=1g.18gb\ngpus=0.5\n"
        )


def test_gpu_fraction_and_memory_variables_are_dlapps_own() -> None:
    for name in ("DLAPP_GPU_FRACTION", "DLAPP_GPU_MEMORY_MB"):
        (found,) = problems(make_spec().env(**{name: "1"}).data())
        assert "is set by dlapp and cannot be overridden" in found
