"""App-spec builders for the hostile-spec corpus: ``make_spec().docker("img").user("00")``.

Each call changes one thing of a small valid spec; ``data()`` gives the native dict (to feed
``AppSpec.from_dict`` where a test expects a refusal), ``build()`` the validated spec.
"""

from __future__ import annotations

import copy
from typing import Any

from dlapp.spec import AppSpec


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

    def data(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def build(self) -> AppSpec:
        return AppSpec.from_dict(self.data())


def make_spec(name: str = "t") -> SpecBuilder:
    return SpecBuilder(name)
