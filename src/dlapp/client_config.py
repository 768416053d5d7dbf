"""The client's settings (``DLAPP_SERVER``, ``DLAPP_TOKEN``, ``~/.config/dlapp/client.yaml``) and
how every settings object is loaded: a YAML file, then ``DLAPP_<NAME>`` variables, then
explicit overrides, validated once. The server's settings (``dlapp.config``) load the same way;
they live apart so that a CLI command loads no pydantic: ``ClientSettings`` is a plain dataclass,
checked here, and only a value that is not plainly right goes through a pydantic model of the same
fields for its messages (start-up time: ``bench/cli_startup.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dlapp.credentials import check_private
from dlapp.errors import DlappError

if TYPE_CHECKING:
    from pydantic import BaseModel

M = TypeVar("M", bound="BaseModel")


def default_home(env: Mapping[str, str] = os.environ) -> Path:
    """Where the embedded cluster keeps its state: ``$DLAPP_HOME`` or the user's data dir."""
    if env.get("DLAPP_HOME"):
        return Path(env["DLAPP_HOME"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dlapp"


@dataclass(frozen=True)
class Secret:
    """A token kept out of reprs and logs, as pydantic's ``SecretStr``."""

    value: str = field(repr=False)

    def get_secret_value(self) -> str:
        return self.value

    def __str__(self) -> str:
        return "**********" if self.value else ""


@dataclass(frozen=True)
class ClientSettings:
    server: str | None = None
    token: Secret | None = None  # for ``server``; the embedded cluster uses its admin.token
    ca_file: Path | None = None  # the CA that signed ``server``'s certificate (else the system's)
    timeout_s: float = 30.0


CLIENT_FIELDS = tuple(f.name for f in fields(ClientSettings))
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def client_settings(values: Mapping[str, Any], source: str) -> ClientSettings:
    """``values`` checked: plain ones (strings, a number) here; anything else through the
    pydantic model of the same fields, whose messages a bad value gets (``build``)."""
    timeout = values.get("timeout_s", 30.0)
    plain = (
        set(values) <= set(CLIENT_FIELDS)
        and all(isinstance(values.get(k), str | None) for k in ("server", "token"))
        and isinstance(values.get("ca_file"), str | Path | None)
        and (
            (isinstance(timeout, int | float) and not isinstance(timeout, bool))
            or (isinstance(timeout, str) and _NUMBER.fullmatch(timeout) is not None)
        )
    )
    if not plain:
        values = build(_client_model(), dict(values), source).model_dump()
        secret = values["token"]
        values["token"] = None if secret is None else secret.get_secret_value()
    token, ca_file = values.get("token"), values.get("ca_file")
    return ClientSettings(
        server=values.get("server"),
        token=None if token is None else Secret(token),
        ca_file=None if ca_file is None else Path(ca_file),
        timeout_s=float(timeout if plain else values["timeout_s"]),
    )


@cache
def _client_model() -> type[BaseModel]:
    from pydantic import BaseModel, ConfigDict, SecretStr

    class ClientSettingsModel(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        server: str | None = None
        token: SecretStr | None = None
        ca_file: Path | None = None
        timeout_s: float = 30.0

    return ClientSettingsModel


def env_overrides(names: Iterable[str], env: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        key = f"DLAPP_{name.upper()}"
        if env.get(key) not in (None, ""):
            out[name] = env[key]
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # only where a file is there to read

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DlappError(f"cannot read configuration {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DlappError(f"configuration {path} must be a mapping")
    return data


def build(model: type[M], values: dict[str, Any], source: str) -> M:
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise DlappError(f"invalid configuration ({source}): {problems}") from None


def client_config_path(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dlapp" / "client.yaml"


def load_client_settings(env: Mapping[str, str] = os.environ, **overrides: Any) -> ClientSettings:
    values: dict[str, Any] = {}
    path = client_config_path(env)
    if path.exists():
        values.update(read_yaml(path))
    from_env = env_overrides(CLIENT_FIELDS, env)
    if values.get("token") and "token" not in from_env and not overrides.get("token"):
        check_private(path, "the token")  # a token others can read is no secret: refuse it
    values.update(from_env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return client_settings(values, str(path))
