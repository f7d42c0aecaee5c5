"""Numbers on the command line are checked where they are typed: the real parser, each range at its edges."""

from __future__ import annotations

import pytest

from agent.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "--out", "f", "--width", "-5"], "argument --width: 16..8192, got -5"),
        (["simulate", "--out", "f", "--height", "8193"], "argument --height: 16..8192, got 8193"),
        (["simulate", "--serve", "rtsp", "--port", "99999"], "argument --port: 1..65535, got 99999"),
        (["simulate", "--serve", "rtsp", "--port", "0"], "argument --port: 1..65535, got 0"),
        (["simulate", "--out", "f", "--frames", "0"], "argument --frames: at least 1, got 0"),
        (
            ["simulate", "--out", "f", "--noise", "nan"],
            "argument --noise: at least 0 and at most 64, got nan",
        ),
        (["simulate", "--out", "f", "--fps", "0"], "argument --fps: above 0, got 0"),
        (["simulate", "--serve", "rtsp", "--duration", "-2"], "argument --duration: above 0, got -2"),
        (["demo", "--duration", "-1"], "argument --duration: above 0, got -1"),
        (["demo", "--width", "8"], "argument --width: 16..8192, got 8"),
        (["encode", "in.avi", "--out", "o.cctv", "--frames", "0"], "argument --frames: at least 1, got 0"),
        (["bench", "in.avi", "--frames", "abc"], "argument --frames: not a whole number: 'abc'"),
        (
            ["collect", "--config", "c.toml", "--stats-interval", "0"],
            "argument --stats-interval: above 0, got 0",
        ),
        (["archive", "export", "r", "--camera", "c", "--out", "o.mkv", "--fps", "inf"], "above 0, got inf"),
        (["archive", "verify", "r", "--jobs", "0"], "argument --jobs: at least 1, got 0"),
    ],
)
def test_an_out_of_range_number_is_refused_naming_the_range(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_the_edges_of_each_range_are_taken() -> None:
    parse = build_parser().parse_args
    args = parse(["simulate", "--serve", "rtsp", "--port", "65535", "--width", "8192", "--height", "16"])
    assert (args.port, args.width, args.height) == (65535, 8192, 16)
    args = parse(["simulate", "--out", "f", "--port", "1", "--frames", "1", "--noise", "0", "--fps", "0.5"])
    assert (args.port, args.frames, args.noise, args.fps) == (1, 1, 0.0, 0.5)
    assert parse(["simulate", "--out", "f", "--noise", "64"]).noise == 64.0
    assert parse(["archive", "verify", "r", "--jobs", "1"]).jobs == 1


def test_log_level_goes_before_or_after_the_command() -> None:
    parse = build_parser().parse_args
    assert parse(["decode", "f.cctv", "--out", "d"]).log_level is None  # INFO, or run's config file's
    assert parse(["--log-level", "ERROR", "decode", "f.cctv", "--out", "d"]).log_level == "ERROR"
    assert parse(["decode", "f.cctv", "--out", "d", "--log-level", "WARNING"]).log_level == "WARNING"
    assert (
        parse(["--log-level", "ERROR", "archive", "info", "root", "--log-level", "DEBUG"]).log_level
        == "DEBUG"
    )
