"""benchmarks/ctx_timing.py: it must tell a byte-identical build of the coder from one that is not.

That check is what a "faster, same bytes" coder change rests on, so it is tested with a build that differs in
one encoder decision only (contexts share a table until 1024 samples, not 4096: still decodable, different
bytes), and with one whose decoder alone is wrong (the encoder's bytes the same).
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "ctx_timing.py"
SOURCE = ROOT / "agent" / "codec" / "_native.c"


def _timing(clip: Path, other: Path) -> tuple[int, dict[str, object]]:
    args = [str(clip), "--frames", "4", "--repeat", "1", "--against", str(other), "--json"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )
    return run.returncode, json.loads(run.stdout)


def test_the_same_build_is_reported_byte_identical_and_timed(pets_cut: Path, tmp_path: Path) -> None:
    installed = Path(str(importlib.import_module("agent.codec._native").__file__))
    copy = tmp_path / installed.name
    shutil.copy(installed, copy)
    code, result = _timing(pets_cut, copy)
    assert code == 0
    assert result["same_bytes"] is True
    assert result["frames"] == 4
    assert result["shape"] == [3, 576, 768]
    coded = result["coded_bytes"]
    assert isinstance(coded, int)
    assert coded > 0
    builds = result["builds"]
    assert isinstance(builds, dict)
    assert set(builds) == {"installed", str(copy)}
    for timing in builds.values():
        assert timing["encode_ms_per_frame"] > timing["cost_ms_per_frame"] > 0
        assert timing["decode_ms_per_frame"] > 0


@pytest.mark.slow
def test_a_build_that_codes_differently_is_caught(pets_cut: Path, tmp_path: Path) -> None:
    tables = "#define MIN_TABLE_SAMPLES 4096"
    _expect_caught(pets_cut, tmp_path, tables, "#define MIN_TABLE_SAMPLES 1024")  # more, smaller tables


@pytest.mark.slow
def test_a_build_that_decodes_differently_is_caught(pets_cut: Path, tmp_path: Path) -> None:
    magnitude = "return (uint32_t)(2 * (v < 0 ? -v : v));"
    _expect_caught(pets_cut, tmp_path, magnitude, "return (uint32_t)(2 * (v < 0 ? -v : v) + (v == 2));")


def _expect_caught(clip: Path, tmp_path: Path, line: str, instead: str) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the extension itself cannot be built here either")
    text = SOURCE.read_text()
    assert line in text
    variant = tmp_path / "_native.c"
    variant.write_text(text.replace(line, instead))
    module = tmp_path / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    build = subprocess.run(
        ["gcc", "-O1", "-shared", "-fPIC", f"-I{include}", str(variant), "-lm", "-o", str(module)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    code, result = _timing(clip, module)
    assert code == 1
    assert result["same_bytes"] is False
