"""The compiled codec under AddressSanitizer and UndefinedBehaviorSanitizer.

``_native.c`` parses bytes that come from the network, so a read past a buffer would be a security bug that
ordinary tests cannot see. This builds the same source with both sanitizers and throws mutated and
truncated CTX payloads (group planes and banded ones from the encoder; run planes and planes without runs
as versions 2 and 3 wrote them, and bands the encoder never cuts, from the encoder written from the
document), and frames of every kind (coded, costed and through the fused pixel stages, B and R following
G's quantisation included, the 2×2 chroma block layout both ways, and JPEG_CHROMA both ways, and the SSIM
mean), at it in a child process, large planes and a plane's bands on several threads too; any invalid
access aborts it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.unit.test_ctx_spec import SPIKES, _spec_encode_bands, _spec_encode_plane, _symbols

SOURCE = Path(__file__).resolve().parents[2] / "agent" / "codec" / "_native.c"

FUZZ = textwrap.dedent(
    """
    import importlib.util, json, random, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location("_native", sys.argv[1])
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    rng, nrng = random.Random(1), np.random.default_rng(1)
    refused = 0

    def unmed(values, flips, shape):  # what decode's flips ask for, the long way: MED undone plane by plane
        n = shape[1] * shape[2]
        return b"".join(
            native.unmed(values[k * n : (k + 1) * n], bytes([flips[k] & 0x80]), 1, *shape[1:])
            if flips[k] else values[k * n : (k + 1) * n]
            for k in range(shape[0])
        )
    for trial in range(60):
        shape = (rng.choice([1, 3]), rng.randint(1, 40), rng.randint(1, 40))
        scale = rng.choice([0.3, 1.0, 3.0, 30.0])
        planes = (nrng.laplace(0, scale, shape).round().astype(int) % 256).astype(np.uint8)
        payload = native.encode(planes.tobytes(), *shape)
        assert native.decode(payload, *shape) == planes.tobytes()
        signed = bytes([1] * shape[0])
        assert native.unmed(native.med(planes.tobytes(), signed, *shape), signed, *shape) == planes.tobytes()
        flips = bytes(rng.choice([0, 1, 0x80]) for _ in range(shape[0]))  # MED undone in the decode pass
        assert native.decode(payload, *shape, True, flips) == unmed(planes.tobytes(), flips, shape)
        assert native.cost(planes.tobytes(), *shape) > 0
        reference = nrng.integers(0, 256, shape, dtype=np.uint8).tobytes()
        rct = shape[0] == 3 and rng.random() < 0.5
        tolerance = rng.choice([0, 0, 1, 2, 255])
        factor = rng.randint(1, min(16, shape[1], shape[2]))
        image = nrng.integers(0, 256, (shape[1], shape[2], shape[0]), dtype=np.uint8)
        affine = rng.choice([(), (16.0, 255 / 219)])  # a frame's grey, or a picture's Y mapped to grey
        grey = native.grey_shrink(image.tobytes(), shape[1], shape[2], shape[0], factor, *affine)
        assert len(grey) == 4 * (shape[1] // factor) * (shape[2] // factor)
        taps = 2 * rng.randint(0, min(15, (min(shape[1], shape[2]) - 1) // 2)) + 1  # at most 31 taps
        kernel = nrng.random(taps, dtype=np.float32).tobytes()
        a, b = (nrng.random(shape[1] * shape[2], dtype=np.float32).tobytes() for _ in range(2))
        key_maps = native.ssim_key(a, kernel, shape[1], shape[2])
        assert len(key_maps) == 12 * (shape[1] - taps + 1) * (shape[2] - taps + 1)
        assert np.isfinite(native.ssim_score(a, b, key_maps, kernel, shape[1], shape[2], 6.5, 58.5))
        with_reference = rng.random() < 0.5
        follow = shape[0] == 3 and tolerance > 0 and not rct and rng.random() < 0.5
        med = bytes(rng.randint(0, 1) for _ in range(shape[0]))
        native.pixels(
            planes.tobytes(), reference if with_reference else None, rct, follow, med, signed, tolerance, *shape
        )
        blocked = native.blocks(planes.tobytes(), *shape, False)
        assert native.blocks(blocked, *shape, True) == planes.tobytes()
        if shape[0] == 3 and shape[1] % 2 == 0 and shape[2] % 2 == 0:
            coded = native.jpeg(planes.tobytes(), shape[1], shape[2], False)
            assert native.jpeg(coded, shape[1], shape[2], True) == planes.tobytes()
            noisy = bytearray(coded)
            for _ in range(8):  # any four planes are a valid input to the inverse
                noisy[rng.randrange(len(noisy))] = rng.randrange(256)
            native.jpeg(bytes(noisy), shape[1], shape[2], True)
        for _ in range(300):
            data = bytearray(payload)
            pick = rng.random()
            if pick < 0.6:
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            elif pick < 0.8:
                data = data[: rng.randrange(len(data))]
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            try:
                native.decode(bytes(data), *shape, True, flips if rng.random() < 0.5 else None)
            except ValueError:
                refused += 1
    for shape in [(3, 300, 401), (1, 1, 5000), (1, 5000, 1), (3, 50, 777)]:
        sparse = np.where(nrng.random(shape) < 0.01, nrng.integers(0, 256, shape), 0).astype(np.uint8)
        for planes in (nrng.integers(0, 256, shape, dtype=np.uint8), np.zeros(shape, np.uint8), sparse):
            assert native.cost(planes.tobytes(), *shape) > 0
            payload = native.encode(planes.tobytes(), *shape)
            assert native.decode(payload, *shape) == planes.tobytes()
    shape = (3, 384, 400)  # planes large enough to be coded and decoded at once, on three threads
    big = np.where(nrng.random(shape) < 0.2, nrng.integers(0, 256, shape), 0).astype(np.uint8)
    big[1] = nrng.integers(0, 256, shape[1:], dtype=np.uint8)  # a stored plane among them
    payload = native.encode(big.tobytes(), *shape, 3)
    assert payload == native.encode(big.tobytes(), *shape, 1)
    assert native.cost(big.tobytes(), *shape, 3) == native.cost(big.tobytes(), *shape, 1)
    assert native.decode(payload, *shape, True, None, 3) == big.tobytes()
    for _ in range(60):
        data = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        try:
            native.decode(bytes(data), *shape, True, bytes([1, 0, 0x80]) if rng.random() < 0.5 else None, 3)
        except ValueError:
            refused += 1
    shape = (1, 768, 1024)  # one plane large enough to be banded (3 bands), coded and decoded at once
    band = np.where(nrng.random(shape) < 0.1, nrng.integers(0, 256, shape), 0).astype(np.uint8)
    band[0, 512:] = nrng.integers(0, 256, (256, 1024), dtype=np.uint8)  # a band that grows: finished in room
    payload = native.encode(band.tobytes(), *shape, 3)
    assert payload[1] & 0xC0 == 0xC0 and payload == native.encode(band.tobytes(), *shape, 1)
    assert native.cost(band.tobytes(), *shape, 3) == native.cost(band.tobytes(), *shape, 1)
    assert native.decode(payload, *shape, True, None, 3) == band.tobytes()
    for _ in range(60):
        data = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data) if rng.random() < 0.5 else 200)] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        try:
            native.decode(bytes(data), *shape, True, bytes([1]) if rng.random() < 0.3 else None, 3)
        except ValueError:
            refused += 1
    assert native.crc_shift(0xFFFFFFFF, 2**40) == native.crc_shift(native.crc_shift(0xFFFFFFFF, 2**39), 2**39)
    for shape, bands, values in json.load(open(sys.argv[3])):  # banded planes of 1 to 16 bands
        bands, values = bytes.fromhex(bands), bytes.fromhex(values)
        assert native.decode(bands, *shape, True, None, 3) == values
        for _ in range(200):
            data = bytearray(bands)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            try:
                native.decode(bytes(data[: rng.randrange(len(data) + 1)] if rng.random() < 0.2 else data), *shape,
                              True, bytes([0x80] * shape[0]) if rng.random() < 0.3 else None, 3)
            except ValueError:
                refused += 1
    for shape, legacy, values in json.load(open(sys.argv[2])):  # run planes and planes without runs
        legacy, values = bytes.fromhex(legacy), bytes.fromhex(values)
        for groups in (False, True):
            assert native.decode(legacy, *shape, groups) == values
            flips = bytes([0x80] * shape[0])
            assert native.decode(legacy, *shape, groups, flips) == unmed(values, flips, shape)
        for _ in range(400):
            data = bytearray(legacy)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            try:
                native.decode(bytes(data[: rng.randrange(len(data) + 1)] if rng.random() < 0.2 else data), *shape,
                              rng.random() < 0.5)
            except ValueError:
                refused += 1
    print("ok", refused)
    """
)


def _legacy_payloads() -> list[tuple[tuple[int, int, int], str, str]]:
    """(shape, payload hex, planes hex): planes as versions 2 and 3 coded them, with runs and without."""
    out = []
    for name in ("spikes-1x24x300", "spikes-3x16x96"):
        planes, _ = SPIKES[name]
        for runs in (True, False):
            payload = b"".join(_spec_encode_plane(plane, 0, runs) for plane in planes)
            out.append((planes.shape, payload.hex(), planes.tobytes().hex()))
    return out


def _banded_payloads() -> list[tuple[tuple[int, int, int], str, str]]:
    """(shape, payload hex, planes hex): banded planes as the document allows them, 1 to 16 bands."""
    out = []
    for name in ("spikes-1x24x300", "spikes-3x16x96"):
        planes, _ = SPIKES[name]
        for bands in (1, 3, 7, 16):
            payload = b"".join(_spec_encode_bands(0, _symbols(plane, 0), bands) for plane in planes)
            out.append((planes.shape, payload.hex(), planes.tobytes().hex()))
    return out


def _runtime(name: str) -> str | None:
    found = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=False)
    path = Path(found.stdout.strip())
    return str(path) if path.is_absolute() and path.exists() else None


@pytest.mark.slow
def test_the_compiled_codec_is_clean_under_sanitizers(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the extension itself cannot be built here either")
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    if asan is None or ubsan is None:
        pytest.skip("gcc has no sanitizer runtimes here")
    module = tmp_path / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover"]
    build = subprocess.run(
        [
            "gcc",
            *flags,
            "-shared",
            "-fPIC",
            "-pthread",
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
    env = os.environ | {
        "LD_PRELOAD": f"{asan} {ubsan}",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "PYTHONMALLOC": "malloc",  # small bytes objects from ASan's malloc too, not pymalloc's arenas
    }
    legacy, banded = tmp_path / "legacy.json", tmp_path / "banded.json"
    legacy.write_text(json.dumps(_legacy_payloads()))
    banded.write_text(json.dumps(_banded_payloads()))
    run = subprocess.run(
        [sys.executable, "-c", FUZZ, str(module), str(legacy), str(banded)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.startswith("ok"), run.stdout
    assert int(run.stdout.split()[1]) > 10_000, "most mutations must be refused"
