"""The stateful decoder: reconstructs records of one or more cameras, in order, and proves each frame.

Every reconstruction is checked against the frame hash the encoder put in the record, so a decoder bug or
a corrupted reference can never pass silently as a good frame.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.codec.encoder import frame_hash
from agent.codec.pipeline import decode_planes, image_of
from agent.codec.transforms import Planes, to_planes
from agent.codec.wire import Kind, Record
from agent.errors import MissingReferenceError, WireFormatError

HELD_PER_CAMERA = 1
"""Recent frames kept per camera besides the key: in order, members reference the key or the previous frame."""


def decode_record(record: Record, reference: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
    """Reconstruct one record given its reference frame (interleaved image) and verify its hash.

    A YUV420 member needs its reference's picture, which the image does not give back: use :func:`reconstruct`
    for chains (it raises ``WireFormatError`` saying so here)."""
    return reconstruct(record, None if reference is None else to_planes(reference))[0]


def reconstruct(record: Record, reference: Planes | None = None) -> tuple[npt.NDArray[np.uint8], Planes]:
    """Reconstruct one record given what :func:`reconstruct` returned for its reference, and verify its hash.

    Returns the frame and the planes a record that references this one needs (``pipeline.held_shape``).
    """
    planes = decode_planes(record.header, record.payload, reference)
    image = image_of(record.header, planes)
    _verify(record, image)
    return image, planes


def _verify(record: Record, image: npt.NDArray[np.uint8]) -> None:
    if frame_hash(image, record.header.hash_kind) != record.header.frame_hash:
        h = record.header
        raise WireFormatError(
            f"camera {h.camera_id!r} seq={h.seq}: reconstructed frame does not match its hash"
        )


@dataclass
class _Key:
    """A group's key: its record always, its planes while members may still be coded against it."""

    seq: int
    record: Record
    planes: Planes | None

    def reference(self) -> Planes:
        if self.planes is None:  # dropped after a member coded against another frame: decode it again
            self.planes = reconstruct(self.record)[1]
        return self.planes


class FrameDecoder:
    """Decodes each camera's records as they arrive in sequence order.

    A record does not say whether later members of its group will reference the key, so the key's record is
    kept for the whole group; its decoded planes (6 MB a 1080p frame) only until a member is coded against
    another frame, which with chained references (the default) is the group's second member. A later member
    that references the key after all (``reference = "auto"``) has it decoded again from the record.
    """

    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}
        self._recent: dict[str, OrderedDict[int, Planes]] = {}

    def decode(self, record: Record) -> npt.NDArray[np.uint8]:
        h = record.header
        recent = self._recent.setdefault(h.camera_id, OrderedDict())
        key = self._keys.get(h.camera_id)
        reference: Planes | None = None
        if h.needs_reference:
            if h.ref_seq in recent:
                reference = recent[h.ref_seq]
            elif key is not None and key.seq == h.ref_seq:
                reference = key.reference()
            else:
                raise MissingReferenceError(h.camera_id, h.seq, h.ref_seq)
        image, planes = reconstruct(record, reference)
        if h.kind is Kind.KEY:
            self._keys[h.camera_id] = _Key(h.seq, record, planes)
        elif key is not None and key.seq == h.key_seq and h.ref_seq != key.seq:
            key.planes = None
        recent[h.seq] = planes
        while len(recent) > HELD_PER_CAMERA:
            recent.popitem(last=False)
        return image
