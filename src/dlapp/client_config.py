"""The client's settings (``DLAPP_SERVER``, ``DLAPP_TOKEN``, ``~/.config/dlapp/client.yaml``) and
how every settings object is loaded: a YAML file, then ``DLAPP_<NAME>`` variables, then
explicit overrides, validated once. The server's settings (``dlapp.config``) load the same way;
they live apart so that a CLI command builds only the client's small model (start-up time:
``bench/cli_startup.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from dlapp.credentials import check_private
from dlapp.errors import DlappError

M = TypeVar("M", bound=BaseModel)


def default_home(env: Mapping[str, str] = os.environ) -> Path:
    """Where the embedded cluster keeps its state: ``$DLAPP_HOME`` or the user's data dir."""
    if env.get("DLAPP_HOME"):
        return Path(env["DLAPP_HOME"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dlapp"


class ClientSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str | None = None
    token: SecretStr | None = None  # for ``server``; the embedded cluster uses its admin.token
    ca_file: Path | None = None  # the CA that signed ``server``'s certificate (else the system's)
    timeout_s: float = 30.0


def env_overrides(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in model.model_fields:
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
    from_env = env_overrides(ClientSettings, env)
    if values.get("token") and "token" not in from_env and not overrides.get("token"):
        check_private(path, "the token")  # a token others can read is no secret: refuse it
    values.update(from_env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build(ClientSettings, values, str(path))
