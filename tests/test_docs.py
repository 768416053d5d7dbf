"""The configuration reference names every server setting and its environment variable."""

from __future__ import annotations

from dlapp.client_config import CLIENT_FIELDS
from dlapp.config import ServerSettings

from conftest import ROOT


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        name
        for name in (*ServerSettings.model_fields, *CLIENT_FIELDS)
        if f"`{name}`" not in text or f"DLAPP_{name.upper()}" not in text
    ]
    assert missing == [], f"settings missing from docs/configuration.md: {missing}"


def test_every_module_is_in_the_architecture_map() -> None:
    """docs/architecture.md names every module of the package (its path under src/dlapp)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "src" / "dlapp"
    modules = [
        p.relative_to(package).as_posix()
        for p in sorted(package.rglob("*.py"))
        if p.name != "__init__.py" and "migrations" not in p.parts
    ]
    missing = [m for m in modules if f"`{m}`" not in text]
    assert missing == [], f"modules missing from docs/architecture.md: {missing}"


def test_every_dlapp_name_the_dev_script_and_ci_import_exists() -> None:
    """``./dev example`` once imported ``count_gpus`` from a module it had left (#15's move)."""
    import importlib
    import re

    found = []
    for script in (ROOT / "dev", ROOT / ".ci" / "run"):
        for module, names in re.findall(r"from (dlapp[\w.]*) import ([\w, ]+)", script.read_text()):
            for name in (n.strip() for n in names.split(",")):
                found.append(f"{module}.{name}")
                where = f"{script.name}: {module}.{name}"
                assert hasattr(importlib.import_module(module), name), where
    assert "dlapp.runtime.gpus.count_gpus" in found
