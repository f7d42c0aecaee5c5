"""Shared fixtures: paths to the real footage, and the fixture plugins of each subsystem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.data"]

for _plugin in ("broker", "rtsp"):
    if (Path(__file__).parent / "fixtures" / f"{_plugin}.py").exists():
        pytest_plugins.append(f"tests.fixtures.{_plugin}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CCTV_HARDWARE") == "1":
        return
    skip = pytest.mark.skip(reason="needs a real camera: set CCTV_HARDWARE=1 to run")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)
