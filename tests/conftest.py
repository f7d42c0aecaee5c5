"""Shared fixtures: paths to the real footage, and the fixture plugins of each subsystem."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.broker",
    "tests.fixtures.rtsp",
    "tests.fixtures.disk",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CCTV_HARDWARE") == "1":
        return
    skip = pytest.mark.skip(reason="needs a real camera: set CCTV_HARDWARE=1 to run")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)
