"""The compiled codec without its AVX2 clones codes and decodes exactly as the installed build does.

On x86-64 the loops that go over every pixel (the fused pixel pass, JPEG_CHROMA's upsampling, solver and
prediction) are also built for AVX2 and picked at load time, so every other test on such a machine runs the
AVX2 code. A Raspberry Pi runs the baseline code, which no other test reaches here. This builds the baseline
alone (``CCTV_NO_CLONES``, the same ``-O3``), puts it in the installed module's place and codes real frames
with it: every record must be the installed build's to the byte, and decode the same.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from agent.capture.files import iter_images
from agent.codec import native
from agent.codec.decoder import FrameDecoder
from agent.codec.encoder import FrameEncoder
from agent.codec.settings import CodecSettings
from agent.codec.wire import Stage, pack_record, unpack_record
from agent.simulate.scene import Scene, SceneSettings
from benchmarks.ctx_timing import load_build
from tests.fixtures.data import jpeg_stills

SOURCE = Path(__file__).resolve().parents[2] / "agent" / "codec" / "_native.c"

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the compiled module is not installed")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    if platform.machine() != "x86_64":
        pytest.skip("only x86-64 builds AVX2 clones: elsewhere the installed build is the baseline")
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the extension itself cannot be built here either")
    module = tmp_path_factory.mktemp("baseline") / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    build = subprocess.run(
        [
            "gcc",
            "-O3",
            "-DCCTV_NO_CLONES",
            "-shared",
            "-fPIC",
            f"-I{include}",
            str(SOURCE),
            "-lm",
            "-o",
            str(module),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    assert b"avx2" not in module.read_bytes(), "the baseline build still carries AVX2 clones"
    return load_build(module)


def _records(frames: list[np.ndarray], codec: CodecSettings) -> list[bytes]:
    encoder = FrameEncoder("cam", codec)
    return [pack_record(encoder.encode(frame, 1_000_000_000 * i)) for i, frame in enumerate(frames)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "codec", "stage"),
    [
        ("video", CodecSettings(), Stage.BLOCK_CHROMA),
        ("video", CodecSettings(tolerance=2), Stage.RESIDUAL_QG),
        ("noise", CodecSettings(tolerance=2), Stage.RESIDUAL_Q),
        ("stills", CodecSettings(jpeg_chroma=True), Stage.JPEG_CHROMA),
        ("stills", CodecSettings(jpeg_chroma=True, tolerance=2), Stage.JPEG_CHROMA),
    ],
    ids=["video", "video-T2", "sensor-noise-T2", "jpeg-stills", "jpeg-stills-T2"],
)
def test_the_baseline_build_codes_the_same_bytes(
    baseline: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    pets_cut: Path,
    source: str,
    codec: CodecSettings,
    stage: Stage,
) -> None:
    if source == "video":
        frames = list(iter_images(pets_cut, 12))
    elif source == "noise":  # independent noise in each channel: B and R do not follow G
        scene = Scene(SceneSettings(width=320, height=240))
        frames = [scene.frame(i) for i in range(8)]
    else:
        frames = jpeg_stills(iter_images(pets_cut, 4))
    installed = _records(frames, codec)
    assert any(stage in unpack_record(r).header.stages for r in installed), f"no record used {stage.name}"

    monkeypatch.setattr(native, "_native", baseline)
    assert _records(frames, codec) == installed
    decoder = FrameDecoder()
    for record, frame in zip(installed, frames, strict=True):
        image = decoder.decode(unpack_record(record))
        assert int(cv2.norm(image, frame, cv2.NORM_INF)) <= codec.tolerance
