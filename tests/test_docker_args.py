"""``docker_run_args`` (pure) against golden files in tests/golden/docker/: one argument a line.

Regenerate after a deliberate change with ``DLAPP_UPDATE_GOLDEN=1 pytest tests/test_docker_args.py``
and review the diff.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from dlapp.cli.devshell import ShellFiles, shell_args
from dlapp.config import ContainerPolicy
from dlapp.runtime.base import LaunchRequest
from dlapp.runtime.docker import (
    RunOptions,
    container_env,
    docker_run_args,
    env_file_path,
    gateway_of,
    node_gpu_policy,
    publish_arg,
    run_env,
)
from dlapp.runtime.podman import cgroups_hybrid, oci_runtime
from dlapp.spec import AppSpec, ContainerOptions, Mount

GOLDEN = Path(__file__).parent / "golden" / "docker"
WORK = Path("/srv/dlapp/work/application_1764201600000_0007/1/0")


@dataclass
class RequestBuilder:
    """A launch request as the supervisor makes it, with fixed node paths."""

    gpus: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    options: ContainerOptions | None = None
    index: int = 0
    node: str | None = None

    def gpu_ids(self, *ids: str) -> RequestBuilder:
        return replace(self, gpus=ids)

    def with_env(self, **env: str) -> RequestBuilder:
        return replace(self, env={**self.env, **env})

    def container(self, **options: object) -> RequestBuilder:
        return replace(self, options=ContainerOptions.model_validate(options))

    def on_node(self, node_id: str) -> RequestBuilder:
        return replace(self, node=node_id)

    def build(self) -> LaunchRequest:
        app_id = "application_1764201600000_0007"
        env = {
            "OMP_NUM_THREADS": "1",
            "DLAPP_APP_ID": app_id,
            "CONTAINER_INDEX": str(self.index),
            "NUM_CONTAINERS": "1",
            "CUDA_VISIBLE_DEVICES": ",".join(self.gpus),
            "DLAPP_WORKSPACE": str(WORK / "workspace"),
            "DLAPP_NOTICE_FILE": str(WORK / "notice.json"),
            "DLAPP_CHECKPOINT_DIR": f"/srv/dlapp/artifacts/checkpoints/{app_id}/0",
            **self.env,
        }
        return LaunchRequest(
            app_id=app_id,
            index=self.index,
            workdir=WORK / "workspace",
            script="train.py",
            args=("--epochs", "15", "--name", "two words"),
            env=env,
            stdout=WORK / "logs" / "stdout",
            stderr=WORK / "logs" / "stderr",
            image="dlapp/pytorch-cpu:latest",
            cpus=2.5,
            memory_mb=4096,
            gpu_ids=self.gpus,
            container=self.options,
            node_id=self.node,
        )


def make_request() -> RequestBuilder:
    return RequestBuilder()


POLICY = ContainerPolicy(cluster_id="c0ffee")
ENV_FILE = env_file_path(make_request().build())  # the env goes there, never to argv
USER = RunOptions(user="1000:1000", env_file=ENV_FILE)


def env_of(req: LaunchRequest, opts: RunOptions = USER, policy: ContainerPolicy = POLICY) -> str:
    """The container's env as its env file holds it, one ``K=V`` a line."""
    return "".join(f"{k}={v}\n" for k, v in sorted(run_env(req, policy, opts).items()))


def check_golden(name: str, argv: list[str]) -> None:
    path = GOLDEN / f"{name}.txt"
    text = "\n".join(argv) + "\n"
    if os.environ.get("DLAPP_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"docker argv differs from {path}"


def test_plain_cpu_app() -> None:
    check_golden("cpu", docker_run_args(make_request().build(), POLICY, USER))


def test_the_env_goes_to_the_env_file_not_to_argv() -> None:
    req = make_request().build()
    argv = docker_run_args(req, POLICY, USER)
    assert "--env" not in argv and not any("OMP_NUM_THREADS" in a for a in argv)
    assert argv[argv.index("--env-file") + 1] == str(ENV_FILE)
    check_golden("cpu-env-file", env_of(req).splitlines())


def test_two_gpus_with_the_nvidia_runtime_are_numbered_from_zero_inside() -> None:
    req = make_request().gpu_ids("2", "3").build()
    argv = docker_run_args(req, POLICY, USER)
    check_golden("nvidia-2-gpus", argv)
    assert argv[argv.index("--gpus") + 1] == '"device=2,3"'  # one CSV field for docker
    env = container_env(req, POLICY)
    assert (env["CUDA_VISIBLE_DEVICES"], env["DLAPP_GPU_IDS"]) == ("0,1", "2,3")


def test_one_gpu_by_cdi_name() -> None:
    policy = POLICY.model_copy(update={"gpus": "cdi"})
    check_golden("cdi-1-gpu", docker_run_args(make_request().gpu_ids("1").build(), policy, USER))


def test_declared_gpus_without_devices_keep_the_node_ids() -> None:
    policy = POLICY.model_copy(update={"gpus": "none"})
    req = make_request().gpu_ids("1").build()
    argv = docker_run_args(req, policy, USER)
    assert "--gpus" not in argv and "--device" not in argv
    assert "CUDA_VISIBLE_DEVICES=1\n" in env_of(req, policy=policy)


def test_admin_allowed_mount_caps_and_host_network() -> None:
    policy = POLICY.model_copy(
        update={
            "allowed_mounts": ("/datasets",),
            "allowed_caps": ("SYS_PTRACE",),
            "allow_host_network": True,
        }
    )
    req = (
        make_request()
        .container(
            mounts=[Mount(host="/datasets/imagenet", path="/data")],
            cap_add=["SYS_PTRACE"],
            network="host",
            user="1234:1234",
        )
        .build()
    )
    opts = RunOptions("1234:1234", env_file=ENV_FILE)
    check_golden("mount-cap-host-network", docker_run_args(req, policy, opts))


def test_the_flags_fence_even_a_request_the_policy_would_refuse() -> None:
    # check_container refuses these at submit; the argv never grants them anyway
    req = make_request().container(privileged=True, network="host", cap_add=["SYS_ADMIN"]).build()
    argv = docker_run_args(req, POLICY, USER)
    check_golden("refused-privileged-host-network", argv)
    assert "--privileged" not in argv and "SYS_ADMIN" not in argv
    assert argv[argv.index("--network") + 1] == "bridge"
    assert argv[argv.index("--cap-drop") + 1] == "ALL"


def test_container_zero_of_a_gang_publishes_the_rendezvous_port_on_its_node() -> None:
    gang = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29731", "WORLD_SIZE": "2"}
    rank0 = docker_run_args(make_request().with_env(RANK="0", **gang).build(), POLICY, USER)
    check_golden("gang-rank-0", rank0)
    assert rank0[rank0.index("--publish") + 1] == "10.0.0.1:29731:29731"  # not every interface
    rank1 = docker_run_args(make_request().with_env(RANK="1", **gang).build(), POLICY, USER)
    assert "--publish" not in rank1
    host = docker_run_args(
        make_request().with_env(RANK="0", **gang).container(network="host").build(),
        POLICY.model_copy(update={"allow_host_network": True}),
        USER,
    )
    assert "--publish" not in host  # on the host network the port is the node's already


@pytest.mark.parametrize(
    "addr,published",
    [("node-a.lab", "29731:29731"), ("fd00::1", "[fd00::1]:29731:29731")],
)
def test_a_master_named_by_host_name_publishes_on_every_interface(
    addr: str, published: str
) -> None:
    assert publish_arg(addr, "29731") == published


def test_containers_carry_the_node_they_run_on() -> None:
    argv = docker_run_args(make_request().on_node("5e1f00d").build(), POLICY, USER)
    assert argv[argv.index("dlapp.node=5e1f00d") - 1] == "--label"


# -- podman: the same builder, engine="podman" ----------------------------------------------

PODMAN = RunOptions(
    user="1000:1000",
    engine="podman",
    ulimits=(("nofile", 1024, 4096), ("nproc", 512, 512)),
    env_file=ENV_FILE,
)


def test_podman_gets_the_same_fence_with_its_userns_cdi_gpus_and_ulimits() -> None:
    req = make_request().gpu_ids("2", "3").on_node("5e1f00d").build()
    argv = docker_run_args(req, POLICY, PODMAN)
    check_golden("podman-2-gpus", argv)
    assert argv[:2] == ["podman", "run"]
    assert argv[argv.index("--userns") + 1] == "host"
    assert "--gpus" not in argv  # podman has none: the policy's nvidia becomes CDI names
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--device"] == [
        "nvidia.com/gpu=2",
        "nvidia.com/gpu=3",
    ]
    assert "nofile=1024:4096" in argv and "nproc=512:512" in argv
    docker = docker_run_args(req, POLICY, USER)
    only_podman = {"--userns", "host", "--ulimit", "nofile=1024:4096", "nproc=512:512"}
    only_podman |= {"--device", "nvidia.com/gpu=2", "nvidia.com/gpu=3"}
    only_docker = {"--gpus", '"device=2,3"'}
    assert set(argv[2:]) - set(docker) == only_podman
    assert set(docker[2:]) - set(argv) == only_docker


def test_podman_rootless_keep_id_and_its_own_command() -> None:
    policy = POLICY.model_copy(update={"userns": "keep-id", "podman": "/opt/bin/podman"})
    argv = docker_run_args(make_request().build(), policy, PODMAN)
    assert argv[0] == "/opt/bin/podman"
    assert argv[argv.index("--userns") + 1] == "keep-id"


@pytest.mark.parametrize("bad", ["root", "keep-id;rm", "", "private"])
def test_a_bad_userns_is_refused_naming_the_choices(bad: str) -> None:
    with pytest.raises(ValueError, match="userns must be host, keep-id, auto or nomap"):
        ContainerPolicy(userns=bad)


def test_dlapp_secrets_never_reach_a_container() -> None:
    req = make_request().with_env(DLAPP_TOKEN="s3cret").build()
    argv = docker_run_args(req, POLICY, USER)
    assert not any("s3cret" in a or "DLAPP_TOKEN" in a for a in argv)
    assert "s3cret" not in env_of(req) and "DLAPP_TOKEN" not in env_of(req)


def test_the_dev_shell_is_the_same_container_interactive(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    spec = AppSpec.from_dict(
        {
            "name": "dev",
            "runtime": "docker",
            "image": "dlapp/minimal",
            "workspace": {"path": "/home/alice/project"},
            "entry": {"script": "run.sh"},
            "resources": {"cpus": 2, "memory": "1G", "gpus": 1},
            "env": {"OMP_NUM_THREADS": "2"},
        }
    )
    policy = POLICY.model_copy(update={"user": "1000:1000"})
    tmp = Path("/tmp/dlapp-shell-x")
    files = ShellFiles(tmp / "spec.yaml", tmp / "relay", tmp / "relay.sh", "/bin")
    argv = shell_args(spec, policy, files, ("1",), "1000:1000", ("bash",), "s1")
    check_golden("dev-shell", argv)
    assert "dlapp.cluster=c0ffee" not in " ".join(argv)  # an orphan sweep never takes a shell
    # `dlapp` inside is the relay's script; no server address or token goes in
    assert "PATH=/dlapp/bin:/bin" in argv and not any("DLAPP_SERVER" in a for a in argv)


def test_gpus_auto_asks_for_devices_only_where_the_node_has_gpus() -> None:
    auto = ContainerPolicy()
    assert auto.gpus == "auto"
    assert node_gpu_policy(auto, lambda: 2).gpus == "nvidia"
    assert node_gpu_policy(auto, lambda: 0).gpus == "none"  # declared GPUs: no device
    cdi = ContainerPolicy(gpus="cdi")
    assert node_gpu_policy(cdi, lambda: 0) is cdi  # the admin's explicit choice stands


@pytest.mark.parametrize("script,expected", [("run.sh", "bash"), ("t.py", "python3")])
def test_the_entry_script_runs_as_in_the_process_runtime(script: str, expected: str) -> None:
    req = replace(make_request().build(), script=script, args=())
    assert docker_run_args(req, POLICY, USER)[-2:] == [expected, script]


def test_the_guard_takes_a_cleanup_command() -> None:
    from dlapp.runtime import guard

    argv = ["--parent", "7", "--cleanup", '["docker", "rm", "-f", "n"]', "--", "docker", "run"]
    assert guard._parse(argv) == (7, None, ["docker", "rm", "-f", "n"], ["docker", "run"])
    assert guard._parse(["--parent", "7", "--", "x"]) == (7, None, [], ["x"])
    as_user = ["--parent", "7", "--user", "1001:1002", "--", "x"]
    assert guard._parse(as_user) == (7, (1001, 1002), [], ["x"])
    for bad in (
        ["--parent", "7", "--cleanup", "{}", "--", "x"],
        ["--parent", "7", "x", "y"],
        ["--parent", "7", "--user", "0:0", "--", "x"],  # never root
    ):
        with pytest.raises(ValueError, match="usage"):
            guard._parse(bad)


def test_the_bridge_gateway_is_the_subnets_first_address_where_docker_names_none() -> None:
    # docker 20.10 (Debian 12's docker.io) leaves the default bridge's Gateway unset
    assert gateway_of("|172.17.0.0/16 ") == "172.17.0.1"
    assert gateway_of("172.18.0.254|172.18.0.0/16 ") == "172.18.0.254"
    assert gateway_of("|fd00::/64 |10.88.0.0/16 ") == "10.88.0.1"  # IPv4 only
    assert gateway_of("") is None and gateway_of("nonsense|x ") is None


def test_a_gang_on_a_loopback_cluster_meets_at_the_bridge_gateway() -> None:
    # a cluster on one machine (Ray on 127.0.0.1): inside a container 127.0.0.1 is itself, so
    # rank 0 publishes on the bridge's gateway and every rank is told to meet there
    gang = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29731", "WORLD_SIZE": "2"}
    opts = RunOptions("1000:1000", gateway="172.17.0.1", env_file=ENV_FILE)
    req0 = make_request().with_env(RANK="0", **gang).build()
    rank0 = docker_run_args(req0, POLICY, opts)
    assert rank0[rank0.index("--publish") + 1] == "172.17.0.1:29731:29731"
    assert "MASTER_ADDR=172.17.0.1\n" in env_of(req0, opts)
    req1 = make_request().with_env(RANK="1", **gang).build()
    rank1 = docker_run_args(req1, POLICY, opts)
    assert "MASTER_ADDR=172.17.0.1\n" in env_of(req1, opts) and "--publish" not in rank1
    # a node's own address is kept, and so is loopback where no gateway was found
    routed = make_request().with_env(RANK="1", **{**gang, "MASTER_ADDR": "10.0.0.1"}).build()
    assert "MASTER_ADDR=10.0.0.1\n" in env_of(routed, opts)
    assert "MASTER_ADDR=127.0.0.1\n" in env_of(req1, USER)


def test_podman_runs_runc_on_a_hybrid_cgroup_node_and_the_policys_runtime_otherwise(
    tmp_path: Path,
) -> None:
    hybrid, unified = tmp_path / "hybrid", tmp_path / "v2"
    (hybrid / "memory").mkdir(parents=True)
    (hybrid / "unified").mkdir()
    (hybrid / "unified" / "cgroup.controllers").write_text("")
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroups_hybrid(hybrid) and not cgroups_hybrid(unified)
    # crun refuses hybrid cgroups: auto picks runc there (where the node has it), nothing on v2
    expected = "runc" if shutil.which("runc") else None
    assert oci_runtime("auto", hybrid) == expected
    assert oci_runtime("auto", unified) is None
    assert oci_runtime("/usr/bin/runsc", hybrid) == "/usr/bin/runsc"
    argv = docker_run_args(make_request().build(), POLICY, replace(PODMAN, oci_runtime="runc"))
    assert argv[argv.index("--runtime") + 1] == "runc"
    assert "--runtime" not in docker_run_args(make_request().build(), POLICY, PODMAN)


@pytest.mark.parametrize("bad", ["", "--privileged", "runc --privileged", "a;b"])
def test_an_oci_runtime_that_is_no_name_or_path_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="oci_runtime must be auto or a runtime"):
        ContainerPolicy(oci_runtime=bad)
