"""The configuration reference names every server setting and its environment variable."""

from __future__ import annotations

from dlapp.config import ClientSettings, ServerSettings

from conftest import ROOT


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        name
        for model in (ServerSettings, ClientSettings)
        for name in model.model_fields
        if f"`{name}`" not in text or f"DLAPP_{name.upper()}" not in text
    ]
    assert missing == [], f"settings missing from docs/configuration.md: {missing}"
