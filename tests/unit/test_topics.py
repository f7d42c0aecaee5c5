"""Topic layout: ids are validated so that no published topic can hold a wildcard or an empty level."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.transport.topics import TopicSet, frame_filter, parse_frame_topic

ID_CHARS = st.sampled_from("ABCXYZabcxyz0189_.-")
VALID_IDS = st.text(ID_CHARS, min_size=1, max_size=64).filter(lambda s: not s.startswith("."))


def test_topics_of_one_camera() -> None:
    topics = TopicSet("cctv", "depot-7", "gate.north_1")
    assert topics.frame == "cctv/depot-7/gate.north_1/frame"
    assert topics.status == "cctv/depot-7/gate.north_1/status"
    assert topics.stats == "cctv/depot-7/gate.north_1/stats"
    assert topics.preview == "cctv/depot-7/gate.north_1/preview"


@pytest.mark.parametrize(
    ("site", "camera", "fragment"),
    [
        ("", "cam1", "site id ''"),
        ("a/b", "cam1", "site id 'a/b'"),
        ("s", "cam+1", "camera id 'cam+1'"),
        ("s", "#", "camera id '#'"),
        ("s", ".hidden", "must not start with '.'"),
        ("s", "c" * 65, "1–64 characters"),
        ("s", "cam\x00", "camera id"),
        ("s", "cam\n", "camera id"),
        ("s", "kamera-ü", "camera id"),
        ("s", "cam 1", "camera id"),
    ],
)
def test_invalid_ids_are_rejected_with_a_reason(site: str, camera: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=r"not a valid id|must not start") as info:
        TopicSet("cctv", site, camera)
    assert fragment in str(info.value)


def test_prefix_may_nest_but_each_level_is_an_id() -> None:
    assert TopicSet("acme/cctv", "s", "c").frame == "acme/cctv/s/c/frame"
    for prefix in ("", "acme/", "/cctv", "acme//cctv", "acme/+", "a/#", "/".join("p" * 9)):
        with pytest.raises(ValueError, match="prefix"):
            TopicSet(prefix, "s", "c")


def test_frame_filter() -> None:
    assert frame_filter("cctv") == "cctv/+/+/frame"


@given(VALID_IDS, VALID_IDS, VALID_IDS, VALID_IDS)
def test_parse_frame_topic_round_trips(p1: str, p2: str, site: str, camera: str) -> None:
    for prefix in (p1, f"{p1}/{p2}"):
        assert parse_frame_topic(TopicSet(prefix, site, camera).frame) == (prefix, site, camera)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "frame",
        "cctv/s/frame",
        "cctv/s/c/status",
        "cctv/s/c/frame/extra",
        "cctv/s/+/frame",
        "cctv/+/c/frame",
        "#/s/c/frame",
        "cctv//c/frame",
        "/s/c/frame",
        "cctv/s/.c/frame",
        "cctv/s/c\x00/frame",
    ],
)
def test_parse_frame_topic_rejects(topic: str) -> None:
    with pytest.raises(ValueError, match=r"topic|id|prefix"):
        parse_frame_topic(topic)


@given(st.text(max_size=80))
def test_parse_frame_topic_only_raises_value_error(topic: str) -> None:
    try:
        prefix, site, camera = parse_frame_topic(topic)
    except ValueError:
        return
    assert topic == f"{prefix}/{site}/{camera}/frame"
