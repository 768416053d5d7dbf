"""The app spec: the reference ``dl_app.properties``, native YAML, validation, the CLI check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dlapp.cli.main import main
from dlapp.errors import SpecError
from dlapp.spec import (
    AppSpec,
    parse_duration_s,
    parse_memory_mb,
    properties_to_dict,
    url_scheme,
)
from spec_builders import REFERENCE_PROPERTIES

MNIST = Path(__file__).resolve().parent.parent / "examples" / "mnist"


def spec_dict(**changes: Any) -> dict[str, Any]:
    """A minimal valid native spec, with top-level keys replaced by ``changes``."""
    data: dict[str, Any] = {"name": "t", "entry": {"script": "run.sh"}}
    data.update(changes)
    return data


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        AppSpec.from_dict(data)
    return info.value.problems


# --- the reference properties file -------------------------------------------------------


@pytest.fixture
def reference() -> AppSpec:
    return AppSpec.from_properties(REFERENCE_PROPERTIES)


def test_reference_name_has_its_quotes_stripped(reference: AppSpec) -> None:
    assert reference.name == "c3 deeplearning app caffe mnist example"


def test_reference_image_and_entry(reference: AppSpec) -> None:
    assert reference.image == "naver/c3_dl-caffe"
    assert reference.entry.script == "dl_app_start.sh"
    assert reference.entry.args == ("-gpu", "all")


def test_reference_input_is_an_hdfs_url_bound_to_data(reference: AppSpec) -> None:
    (binding,) = reference.inputs
    assert binding.url == "hdfs:///user/tony/caffe_test/*"
    assert binding.path == "data"
    assert binding.scheme == "hdfs"


def test_reference_output_is_an_hdfs_url_with_overwrite(reference: AppSpec) -> None:
    (binding,) = reference.outputs
    assert binding.url == "hdfs:///user/tony/caffe_mnist_example_output"
    assert binding.path == "output"
    assert binding.overwrite is True


def test_reference_username_is_not_part_of_the_spec(reference: AppSpec) -> None:
    assert "username" not in properties_to_dict(REFERENCE_PROPERTIES)
    assert "user" not in AppSpec.model_fields
    assert "user" not in reference.to_dict()


def test_reference_workspace_resolves_against_base_dir(tmp_path: Path) -> None:
    spec = AppSpec.from_properties(REFERENCE_PROPERTIES, base_dir=tmp_path)
    assert spec.workspace.path == str(tmp_path.resolve() / "user_dev_workspace")
    assert spec.inputs[0].url == "hdfs:///user/tony/caffe_test/*"


# --- the shipped mnist example -----------------------------------------------------------


@pytest.mark.parametrize("filename", ["app.yaml", "dl_app.properties"])
def test_mnist_example_parses(filename: str) -> None:
    spec = AppSpec.from_file(MNIST / filename)
    assert spec.name == "mnist-lenet"
    assert spec.resources.gpus == 1
    assert spec.resources.memory_mb == 2048
    assert spec.max_runtime_s == 1800


@pytest.mark.parametrize("filename", ["app.yaml", "dl_app.properties"])
def test_mnist_example_local_paths_are_made_absolute(filename: str) -> None:
    spec = AppSpec.from_file(MNIST / filename)
    workspace = Path(spec.workspace.path)
    assert workspace.is_absolute()
    assert workspace.is_relative_to(MNIST)
    for binding in spec.inputs + spec.outputs:
        if binding.scheme == "file":
            assert binding.url.startswith("file:///")
            assert Path(binding.url.removeprefix("file://")).is_relative_to(MNIST)


def test_from_file_resolves_relative_file_urls_against_the_spec_dir(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "app.yaml"
    path.parent.mkdir()
    path.write_text(
        "name: t\n"
        "workspace: {path: ws}\n"
        "entry: {script: run.sh}\n"
        "inputs: [{url: ../shared/data, path: data}]\n"
        "outputs: [{url: 'file:out', path: output}]\n"
    )
    spec = AppSpec.from_file(path)
    assert spec.workspace.path == str(tmp_path.resolve() / "sub" / "ws")
    assert spec.inputs[0].url == "file://" + str(tmp_path.resolve() / "shared" / "data")
    assert spec.outputs[0].url == "file://" + str(tmp_path.resolve() / "sub" / "out")


def test_from_file_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        AppSpec.from_file(tmp_path / "absent.yaml")


# --- round trips -------------------------------------------------------------------------


def full_spec() -> AppSpec:
    return AppSpec.from_dict(
        {
            "name": "full example",
            "queue": "root.team",
            "image": "pytorch/pytorch",
            "runtime": "docker",
            "workspace": {"path": "/ws", "exclude": ["*.ckpt", "data"]},
            "entry": {"script": "bin/train.sh", "args": ["--lr", "0.1"]},
            "resources": {"cpus": 2.5, "memory": "1536M", "gpus": 2},
            "num_containers": 3,
            "env": {"SEED": 1, "DEBUG": True, "EMPTY": None},
            "inputs": [{"url": "s3://bucket/in", "path": "data"}],
            "outputs": [{"url": "hdfs:///out", "path": "output", "overwrite": True}],
            "max_runtime": "2h",
        }
    )


def test_dict_round_trip_gives_an_equal_spec() -> None:
    spec = full_spec()
    assert AppSpec.from_dict(spec.to_dict()) == spec


def test_yaml_round_trip_gives_an_equal_spec() -> None:
    spec = full_spec()
    assert AppSpec.from_yaml(spec.to_yaml()) == spec


def test_reference_spec_round_trips(reference: AppSpec) -> None:
    assert AppSpec.from_yaml(reference.to_yaml()) == reference


def test_to_dict_uses_the_native_spellings() -> None:
    data = full_spec().to_dict()
    assert data["resources"]["memory"] == "1536M"
    assert data["max_runtime"] == 7200
    assert data["env"] == {"SEED": "1", "DEBUG": "true", "EMPTY": ""}


# --- unknown keys ------------------------------------------------------------------------


def test_unknown_top_level_key_lists_the_valid_keys() -> None:
    (problem,) = problems_of(spec_dict(gpus=1))
    assert "unknown key 'gpus'" in problem
    assert "resources" in problem and "num_containers" in problem


def test_unknown_resources_key_lists_resource_keys() -> None:
    (problem,) = problems_of(spec_dict(resources={"gpu": 1}))
    assert "unknown key 'gpu' in resources" in problem
    assert "cpus, gpu_type, gpus, memory" in problem


def test_unknown_entry_key_lists_entry_keys() -> None:
    (problem,) = problems_of(spec_dict(entry={"script": "run.sh", "argv": []}))
    assert "unknown key 'argv' in entry" in problem
    assert "args, script" in problem


def test_unknown_binding_key_lists_binding_keys() -> None:
    (problem,) = problems_of(spec_dict(inputs=[{"url": "s3://b/x", "path": "d", "cache": 1}]))
    assert "unknown key 'cache' in inputs" in problem
    assert "overwrite, path, save_on_failure, url" in problem


def test_unknown_properties_key_lists_the_valid_keys() -> None:
    text = "[application]\nappname=a\nuser_shell_script=r.sh\ngpu=1\n"
    with pytest.raises(SpecError) as info:
        AppSpec.from_properties(text)
    (problem,) = info.value.problems
    assert "unknown key 'gpu' in [application]" in problem
    assert "'gpus'" in problem and "'docker_image'" in problem


def test_unknown_properties_binding_key_is_refused() -> None:
    text = "[application]\nappname=a\nuser_shell_script=r.sh\n[to_hdfs]\nhdfs=/o\npath=out\n"
    with pytest.raises(SpecError, match=r"unknown key 'path' in \[to_hdfs\]"):
        AppSpec.from_properties(text)


def test_unknown_properties_section_is_refused() -> None:
    text = "[application]\nappname=a\nuser_shell_script=r.sh\n[resources]\ngpus=1\n"
    with pytest.raises(SpecError) as info:
        AppSpec.from_properties(text)
    assert "unknown section(s) ['resources']" in info.value.message
    assert "from_hdfs" in info.value.message


def test_properties_without_application_section_is_refused() -> None:
    with pytest.raises(SpecError, match=r"missing the \[application\] section"):
        AppSpec.from_properties("[env]\nA=1\n")


def test_properties_bad_overwrite_is_refused() -> None:
    text = "[application]\nappname=a\nuser_shell_script=r.sh\n[to_hdfs]\nhdfs=/o\noverwrite=maybe\n"
    with pytest.raises(SpecError, match="overwrite must be true or false"):
        AppSpec.from_properties(text)


def test_properties_that_do_not_parse_are_a_spec_error() -> None:
    with pytest.raises(SpecError, match="not a valid properties file"):
        AppSpec.from_properties("appname=no section header\n")


# --- memory and durations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mb"), [("4G", 4096), ("512M", 512), ("1.5G", 1536), (1024, 1024), ("2GiB", 2048)]
)
def test_memory_sizes(value: object, mb: int) -> None:
    assert parse_memory_mb(value) == mb


@pytest.mark.parametrize("value", ["4X", "", "G", True])
def test_memory_that_is_not_a_size_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="memory must be a size"):
        parse_memory_mb(value)


@pytest.mark.parametrize("value", ["0", 0, "512K"])
def test_memory_below_one_mib_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="at least 1M"):
        parse_memory_mb(value)


def test_bad_memory_in_a_spec_names_the_field() -> None:
    (problem,) = problems_of(spec_dict(resources={"memory": "4X"}))
    assert problem.startswith("resources.memory")


@pytest.mark.parametrize(("value", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), (45, 45)])
def test_durations(value: object, seconds: int) -> None:
    assert parse_duration_s(value) == seconds


@pytest.mark.parametrize("value", ["soon", "30 minutes", "-5m", True])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="a duration looks like"):
        parse_duration_s(value)


def test_zero_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        parse_duration_s("0s")


def test_bad_max_runtime_in_a_spec_names_the_field() -> None:
    (problem,) = problems_of(spec_dict(max_runtime="forever"))
    assert problem.startswith("max_runtime")


# --- field validation --------------------------------------------------------------------


def test_env_name_must_be_a_variable_name() -> None:
    (problem,) = problems_of(spec_dict(env={"1X": "a"}))
    assert "'1X' is not a valid variable name" in problem


def test_env_cannot_override_what_dlapp_sets() -> None:
    (problem,) = problems_of(spec_dict(env={"CUDA_VISIBLE_DEVICES": "0"}))
    assert "'CUDA_VISIBLE_DEVICES' is set by dlapp" in problem


def test_negative_gpus_are_refused() -> None:
    (problem,) = problems_of(spec_dict(resources={"gpus": -1}))
    assert problem.startswith("resources.gpus")


def test_zero_containers_are_refused() -> None:
    (problem,) = problems_of(spec_dict(num_containers=0))
    assert problem.startswith("num_containers")


@pytest.mark.parametrize("path", ["/abs/data", "../data", "data/../../x"])
def test_binding_path_must_stay_inside_the_workspace(path: str) -> None:
    (problem,) = problems_of(spec_dict(inputs=[{"url": "s3://b/x", "path": path}]))
    assert "must be relative to the workspace" in problem


def test_binding_path_is_normalised() -> None:
    spec = AppSpec.from_dict(spec_dict(outputs=[{"url": "s3://b/o", "path": "./out/"}]))
    assert spec.outputs[0].path == "out"


def test_entry_script_must_stay_inside_the_workspace() -> None:
    (problem,) = problems_of(spec_dict(entry={"script": "../x.sh"}))
    assert "must be a path inside the workspace" in problem


def test_entry_is_required() -> None:
    assert problems_of({"name": "t"}) == ["entry is required"]


def test_two_outputs_to_one_url_are_refused() -> None:
    outputs = [{"url": "s3://b/o", "path": "a"}, {"url": "s3://b/o", "path": "b"}]
    (problem,) = problems_of(spec_dict(outputs=outputs))
    assert "same url" in problem


def test_yaml_args_string_is_shell_split() -> None:
    spec = AppSpec.from_yaml(
        "name: t\nentry:\n  script: run.sh\n  args: \"-gpu all --msg 'a b'\"\n"
    )
    assert spec.entry.args == ("-gpu", "all", "--msg", "a b")


def test_several_problems_are_reported_together() -> None:
    data = spec_dict(resources={"gpus": -1, "memory": "4X"}, num_containers=0, bogus=1)
    with pytest.raises(SpecError) as info:
        AppSpec.from_dict(data)
    assert len(info.value.problems) >= 2
    for problem in info.value.problems:
        assert problem in info.value.message


def test_invalid_yaml_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="not valid YAML"):
        AppSpec.from_yaml("name: [unclosed\n")


def test_yaml_that_is_not_a_mapping_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="must be a mapping"):
        AppSpec.from_yaml("- a\n- b\n")


# --- url_scheme --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["", "data/x", "file://", "file:///tmp/x"])
def test_local_paths_and_file_urls_have_the_file_scheme(url: str) -> None:
    assert url_scheme(url) == "file"


@pytest.mark.parametrize(("url", "scheme"), [("hdfs://", "hdfs"), ("s3://", "s3")])
def test_remote_urls_keep_their_scheme(url: str, scheme: str) -> None:
    assert url_scheme(url) == scheme


def test_url_scheme_is_lower_case() -> None:
    assert url_scheme("S3://bucket/key") == "s3"


# --- `dlapp spec check` ------------------------------------------------------------------


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text("name: t\nentry: {script: run.sh, args: '-gpu all'}\nresources: {memory: 1G}\n")
    return path


def test_spec_check_prints_the_normalised_yaml(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["spec", "check", str(spec_file)]) == 0
    printed = AppSpec.from_yaml(capsys.readouterr().out)
    assert printed == AppSpec.from_file(spec_file)
    assert printed.entry.args == ("-gpu", "all")


def test_spec_check_json_is_accepted_by_from_dict(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["spec", "check", "--json", str(spec_file)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert AppSpec.from_dict(data) == AppSpec.from_file(spec_file)


def test_spec_check_of_a_bad_file_names_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\nentry: {script: run.sh}\nresources: {gpus: -1}\n")
    assert main(["spec", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert "resources.gpus" in captured.err
    assert captured.out == ""


def test_one_memory_grammar_with_each_reader_taking_its_part() -> None:
    from dlapp.sim.trace import parse_memory_mb as trace_memory
    from dlapp.spec import memory_size, parse_memory_mb

    assert memory_size("384Gi") == (384.0, "G", "I")
    assert memory_size("1.5 GiB") == (1.5, "G", "IB")
    assert memory_size("4 gigs") is None
    assert parse_memory_mb("1.5GiB") == 1536 and parse_memory_mb("2097152B") == 2
    for kubernetes in ("4Gi", "4i", "4iB"):  # a spec says 4G or 4GiB
        with pytest.raises(ValueError, match="memory must be a size"):
            parse_memory_mb(kubernetes)
    assert trace_memory("384Gi", "memory") == 384 * 1024  # a trace may come from Kubernetes
