"""The stateful decoder: reconstructs records of one or more cameras, in order, and proves each frame.

Every reconstruction is checked against the frame hash the encoder put in the record, so a decoder bug or
a corrupted reference can never pass silently as a good frame.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from agent.codec.encoder import frame_hash
from agent.codec.pipeline import decode_planes
from agent.codec.transforms import Planes, from_planes, to_planes
from agent.codec.wire import Kind, Record
from agent.errors import MissingReferenceError, WireFormatError

HELD_PER_CAMERA = 1
"""Recent frames kept per camera besides the key: in order, members reference the key or the previous frame."""


def decode_record(record: Record, reference: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
    """Reconstruct one record given its reference frame (interleaved image) and verify its hash."""
    planes = decode_planes(record.header, record.payload, None if reference is None else to_planes(reference))
    image = from_planes(planes)
    _verify(record, image)
    return image


def _verify(record: Record, image: npt.NDArray[np.uint8]) -> None:
    if frame_hash(image, record.header.hash_kind) != record.header.frame_hash:
        h = record.header
        raise WireFormatError(
            f"camera {h.camera_id!r} seq={h.seq}: reconstructed frame does not match its hash"
        )


class FrameDecoder:
    """Decodes each camera's records as they arrive in sequence order."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[int, Planes]] = {}
        self._recent: dict[str, OrderedDict[int, Planes]] = {}

    def holds(self, camera_id: str, seq: int) -> bool:
        key = self._keys.get(camera_id)
        return (key is not None and key[0] == seq) or seq in self._recent.get(camera_id, {})

    def decode(self, record: Record) -> npt.NDArray[np.uint8]:
        h = record.header
        recent = self._recent.setdefault(h.camera_id, OrderedDict())
        reference: Planes | None = None
        if h.needs_reference:
            key = self._keys.get(h.camera_id)
            if key is not None and key[0] == h.ref_seq:
                reference = key[1]
            elif h.ref_seq in recent:
                reference = recent[h.ref_seq]
            else:
                raise MissingReferenceError(h.camera_id, h.seq, h.ref_seq)
        planes = decode_planes(h, record.payload, reference)
        image = from_planes(planes)
        _verify(record, image)
        if h.kind is Kind.KEY:
            self._keys[h.camera_id] = (h.seq, planes)
        recent[h.seq] = planes
        while len(recent) > HELD_PER_CAMERA:
            recent.popitem(last=False)
        return image
