"""App-spec builders for the hostile-spec corpus: ``make_spec().docker("img").user("00")``.

Each call changes one thing of a small valid spec; ``data()`` gives the native dict (to feed
``AppSpec.from_dict`` where a test expects a refusal), ``build()`` the validated spec.
"""

from __future__ import annotations

import copy
from typing import Any

from dlapp.spec import AppSpec

# Verbatim from SEED.md, "The app spec (dl_app.properties)".
REFERENCE_PROPERTIES = """\
[application]
username=tony
appname='c3 deeplearning app caffe mnist example'
docker_image=naver/c3_dl-caffe
user_dev_workspace_path=./user_dev_workspace
user_shell_script=dl_app_start.sh
user_shell_args='-gpu all'
[from_hdfs]
hdfs=/user/tony/caffe_test/*
input_path=data
[to_hdfs]
output_path=output
hdfs=/user/tony/caffe_mnist_example_output
overwrite=true
"""


class SpecBuilder:
    def __init__(self, name: str) -> None:
        self._data: dict[str, Any] = {"name": name, "entry": {"script": "run.sh"}}

    def _with(self, **changes: Any) -> SpecBuilder:
        other = SpecBuilder(self._data["name"])
        other._data = {**copy.deepcopy(self._data), **changes}
        return other

    def docker(self, image: str | None = "dlapp/minimal", runtime: str = "docker") -> SpecBuilder:
        return self._with(runtime=runtime, image=image)

    def image(self, image: str | None) -> SpecBuilder:
        return self._with(image=image)

    def container(self, **options: Any) -> SpecBuilder:
        return self._with(container={**self._data.get("container", {}), **options})

    def user(self, user: str) -> SpecBuilder:
        return self.container(user=user)

    def script(self, script: str, *args: str) -> SpecBuilder:
        return self._with(entry={"script": script, "args": list(args)})

    def env(self, **env: str) -> SpecBuilder:
        return self._with(env={**self._data.get("env", {}), **env})

    def input(self, url: str, path: str = "data") -> SpecBuilder:
        return self._with(inputs=[*self._data.get("inputs", []), {"url": url, "path": path}])

    def output(self, url: str, path: str = "out") -> SpecBuilder:
        return self._with(outputs=[*self._data.get("outputs", []), {"url": url, "path": path}])

    def resources(self, **resources: Any) -> SpecBuilder:
        return self._with(resources={**self._data.get("resources", {}), **resources})

    def gpus(self, gpus: Any) -> SpecBuilder:
        """Whole GPUs, a fraction (``0.25``), or MIG (``{"mig": "1g.18gb", "count": 1}``)."""
        return self.resources(gpus=gpus)

    def containers(self, n: int) -> SpecBuilder:
        return self._with(num_containers=n)

    def max_attempts(self, n: int) -> SpecBuilder:
        return self._with(max_attempts=n)

    def queue(self, queue: str) -> SpecBuilder:
        return self._with(queue=queue)

    def data(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def build(self) -> AppSpec:
        return AppSpec.from_dict(self.data())


def make_spec(name: str = "t") -> SpecBuilder:
    return SpecBuilder(name)
