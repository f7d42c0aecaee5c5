"""The stateful encoder: key selection, reference choice and the cheapest stage list per frame.

It mirrors the decoder: after each frame it keeps exactly what the decoder will reconstruct (not the
captured pixels), so near-lossless chains never drift, however long they get.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from agent.codec import native, yuv
from agent.codec.keyselect import KeyDecision, KeySelector
from agent.codec.pipeline import encode_planes, pixel_stages
from agent.codec.settings import CodecSettings
from agent.codec.transforms import Planes, from_planes, to_planes
from agent.codec.wire import (
    COLOUR_FOLLOWS_G,
    QUANTISING_STAGES,
    FrameHash,
    Kind,
    PixelFormat,
    Record,
    RecordHeader,
    Stage,
    hash_pixels,
    luma_step,
)

log = logging.getLogger(__name__)


def frame_hash(image: npt.NDArray[np.uint8], kind: FrameHash = FrameHash.XXH3_128) -> bytes:
    """The record's ``frame_hash`` field for an (H, W[, 3]) image: its pixels interleaved and row-major."""
    return hash_pixels(np.ascontiguousarray(image).data, kind)


def pixel_format_of(image: npt.NDArray[np.uint8]) -> PixelFormat:
    if image.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return PixelFormat.GRAY8
    if image.ndim == 3 and image.shape[2] == 3:
        return PixelFormat.BGR8
    raise ValueError(f"frames must be (H, W) grey or (H, W, 3) BGR, got shape {image.shape}")


@dataclass(slots=True)
class _Held:
    seq: int
    planes: Planes
    sample: Planes | None = None
    """Its rows that the recipe estimates read (``sample_rows``), taken once: a reference is estimated against
    by up to three recipes a frame, and a lossless frame's sample is already taken when it is the current one."""


_NO_PLANES: Planes = np.zeros((0, 0, 0), dtype=np.uint8)


def intra_stage_lists(
    settings: CodecSettings, pixel_format: PixelFormat, *, picture: bool = False
) -> list[tuple[Stage, ...]]:
    """Intra recipes: exact, and with a tolerance also quantised (the estimate picks; exact is within any T).

    ``picture``: the group codes the frames' yuv420p pictures (YUV420): exact, and with a tolerance also with
    Y on its lattice (QUANTIZE_Y).

    Colour frames are quantised two ways: G alone with B and R following it (QUANTIZE_G, the chroma stays
    exact: the JPEG stills 1.54× smaller at T=2 than exact, against 1.12× quantising each channel), or each
    channel on its own (QUANTIZE, for noise that differs from channel to channel).
    """
    if picture:
        exact_picture = (Stage.YUV420, Stage.MED, settings.entropy_stage)
        if not settings.tolerance:
            return [exact_picture]
        return [(Stage.YUV420, Stage.QUANTIZE_Y, Stage.MED, settings.entropy_stage), exact_picture]
    colour = pixel_format is PixelFormat.BGR8
    exact = (*((Stage.RCT,) if colour else ()), Stage.MED, settings.entropy_stage)
    # Only on even sizes: FrameEncoder drops it elsewhere (fits).
    jpeg = (Stage.JPEG_CHROMA, Stage.MED, settings.entropy_stage) if colour and settings.jpeg_chroma else None
    if not settings.tolerance:
        return [exact] if jpeg is None else [exact, jpeg]
    quantised = [(Stage.QUANTIZE, *exact)]
    if colour:
        quantised.insert(0, (Stage.QUANTIZE_G, Stage.MED, settings.entropy_stage))
    if jpeg is not None:
        return [(Stage.QUANTIZE_G, *jpeg), *quantised, exact, jpeg]
    return [*quantised, exact]


def residual_stage_lists(
    settings: CodecSettings, pixel_format: PixelFormat, *, picture: bool = False
) -> list[tuple[Stage, ...]]:
    """Residual recipes tried per member: without a spatial predictor (exact-zero regions), and with MED (noise).

    ``picture``: the group codes the frames' yuv420p pictures (YUV420): their exact residuals, plain or MED,
    and with a tolerance first Y's residual on its lattice (RESIDUAL_QY), the chroma's exact.

    On colour frames the residual goes through RCT: decoded video carries 4:2:0 chroma, so the three
    residual planes move together and RCT takes that shared part out (measured: 5.6× → 9.9× on PETS).
    Colour residuals are also tried with MED on the chroma planes only (MED_CHROMA): PETS's luma residual is
    cheaper unpredicted, its chroma predicted (lossless 1.4 % smaller). With zstd, the recipe without MED runs
    PackBits first (``packbits``). With a tolerance the quantised residuals are tried first, and the exact
    ones too: on clean video the exact residual is sometimes smaller, and it is always within tolerance.
    Colour is quantised as in :func:`intra_stage_lists`: G alone with B and R following it (RESIDUAL_QG), or
    each channel on its own (RESIDUAL_Q); a group keeps to one of the two (``FrameEncoder._choose``).
    """
    entropy = settings.entropy_stage
    flat: tuple[Stage, ...] = (Stage.PACKBITS,) if settings.packbits and entropy is Stage.ZSTD else ()
    if picture:
        exact_pictures = [
            (Stage.YUV420, Stage.RESIDUAL, *flat, entropy),
            (Stage.YUV420, Stage.RESIDUAL, Stage.MED, entropy),
        ]
        if not settings.tolerance:
            return exact_pictures
        quantised_pictures = [
            (Stage.YUV420, Stage.RESIDUAL_QY, *flat, entropy),
            (Stage.YUV420, Stage.RESIDUAL_QY, Stage.MED, entropy),
        ]
        return quantised_pictures + exact_pictures
    colour = pixel_format is PixelFormat.BGR8
    first: tuple[Stage, ...] = (Stage.RESIDUAL, Stage.RCT) if colour else (Stage.RESIDUAL,)
    exact = [(*first, *flat, entropy), (*first, Stage.MED, entropy)]
    if colour:
        exact.append((*first, Stage.MED_CHROMA, entropy))
    if not settings.tolerance:
        return exact
    each = (Stage.RESIDUAL_Q, Stage.RCT) if colour else (Stage.RESIDUAL_Q,)
    quantised = [(*each, *flat, entropy), (*each, Stage.MED, entropy)]
    if colour:
        quantised[:0] = [
            (Stage.RESIDUAL_QG, Stage.MED_CHROMA, entropy),
            (Stage.RESIDUAL_QG, Stage.MED, entropy),
        ]
    return quantised + exact


def fits(stages: tuple[Stage, ...], planes: Planes) -> bool:
    """Whether a recipe can code frames of this size (JPEG_CHROMA needs an even width and height)."""
    return Stage.JPEG_CHROMA not in stages or (planes.shape[1] % 2 == 0 and planes.shape[2] % 2 == 0)


def block_chroma_variant(stages: tuple[Stage, ...]) -> tuple[Stage, ...] | None:
    """The recipe with its chroma planes laid out by 2×2 block (BLOCK_CHROMA right after the stage that made
    them), or None for a recipe without RCT's chroma planes (grey, JPEG_CHROMA)."""
    if Stage.JPEG_CHROMA in stages:
        return None
    for maker in (Stage.RCT, Stage.RESIDUAL_QG, Stage.QUANTIZE_G):
        if maker in stages:
            after = stages.index(maker) + 1
            return (*stages[:after], Stage.BLOCK_CHROMA, *stages[after:])
    return None


QUANTISED_MUST_SAVE = 0.2
"""With a tolerance, a quantised recipe is chosen only when estimated at least this much smaller than an exact one.
Once a frame is quantised, exact residuals against its reconstruction carry its error and quantising always
looks cheaper from then on. When each channel was quantised on its own (wire format ≤ 4) greedy choice made
T=2 19-22 % *larger* than exact on PETS and the motorway clip, and 0.4 was needed; with B and R following G the
error re-enters G's residual only, and 0.2 is best: T=2 over exact on 150 frames PETS 1.57×, Intel 1.50×, the
motorway clip 1.54×, the stills 1.54× (0.4: 1.54, 1.33, 1.51, 1.49×; 0: the same on the videos, stills 1.52×).

Quantised intra coding right after an intra-coded frame is exempt when it is the smallest recipe outright: in a
run of intra frames (stills, scene cuts) no residual inherits the error (LTA stills at T=2: 1.00× → 1.11×)."""
EACH_CHANNEL_MUST_SAVE = 0.35
"""On colour frames with a tolerance, a key or a group's first member quantises each channel on its own only where
that is estimated at least this much smaller than letting B and R follow G (``FrameEncoder._choose``), and the
group keeps the first member's choice. Measured, each channel on its own against following G: members of the
public videos 0.61-1.12× (Intel's lowest 0.61, PETS 0.86-0.93), keys 1.18-1.45× but 0.97 on PETS shrunk to
384×288 (holding keys to the margin made the T=2 streams of PETS and Intel shrunk to 192×144 and 384×288
5 % smaller to 1 % larger); the simulated camera's sensor noise 0.51-0.55× for members and 0.61× for keys
(0.4 lost its key's quantising: 3 %)."""
KEEP_RECIPE_FRAMES = 8
KEEP_RECIPE_CHANGE = 0.2
"""A member's recipe is kept for the next member, estimated alone, up to KEEP_RECIPE_FRAMES members in a row
and while its estimate moves by at most this fraction; else every recipe is estimated again. Measured on the
public sets, lossless: every recipe estimated on 13 % (PETS) to 73 % (Intel) of members instead of all, bytes
+0.05 % (Intel) or the same; encode time -5 % on PETS and the motorway clip, within noise on the others. After
two steady estimates in a row the kept recipe codes the next members outright, its coded size checked the same
way (``_encode_kept``): the same bytes, 2-3 % fewer instructions a frame (docs/benchmarks.md)."""
INTRA_WORTH_TRYING_RATIO = 8.0
"""Intra coding is only estimated for a member whose best residual compresses worse than this."""
INTRA_CLOSE_RATIO = 1.25
"""... and then only if intra's last estimate was within this of the residual (``_intra_may_win``). Measured on
the 320x240 motorway clip, whose residuals sit near the ratio above: intra estimated on 55 of 148 members,
1.46-3.2x the residual and never chosen. On Intel the source's I-frames make intra 0.7-1.0x the residual every
10th frame, and it is still estimated (and chosen) there."""


class FrameEncoder:
    """Turns a camera's frames, in capture order, into wire records with consecutive sequence numbers."""

    def __init__(self, camera_id: str, settings: CodecSettings | None = None, first_seq: int = 0) -> None:
        self.camera_id = camera_id
        self.settings = settings or CodecSettings()
        self.next_seq = first_seq
        self._selector = KeySelector(self.settings)
        self._key: _Held | None = None
        self._previous: _Held | None = None
        self._previous_intra = False  # the frame before was coded on its own (a key, or a member coded intra)
        # The last member's recipe: its stages, whether it referenced the key, its estimate and its coded bytes.
        self._kept: tuple[tuple[Stage, ...], bool, float, int] | None = None
        self._since_all = 0  # members since every recipe was last estimated
        self._trial_ok = False  # the next member is coded with the kept recipe before any estimate
        self._steady_before = False  # the last member's estimate found the scene steady
        # With a tolerance on colour frames: whether this group quantises each channel on its own (True) or lets
        # B and R follow G (False); None until its first member's estimates decide (``_choose``).
        self._each_channel: bool | None = None
        # Whether this group lays its chroma out by 2×2 block (BLOCK_CHROMA): its key's estimates decide.
        self._block_chroma = False
        # Whether this group codes the frames' yuv420p pictures (YUV420): its key decides (``_picture_usable``).
        self._yuv = False
        self._current = _Held(-1, _NO_PLANES)  # the frame being coded, and its estimates' sample once taken
        # Intra coding's last estimate in this group (with its margin) and the seq it was made at.
        self._intra_seen: tuple[float, int] | None = None

    def request_key(self) -> None:
        """Make the next frame a key (after data loss: what follows must not need what was lost)."""
        self._selector.request_key()

    def encode(
        self,
        image: npt.NDArray[np.uint8],
        capture_time_ns: int,
        *,
        clock_synced: bool = True,
        force_key: bool = False,
        picture: bytes | bytearray | memoryview | None = None,
    ) -> Record:
        """Code one frame. ``picture``: the packed yuv420p picture ``image`` was converted from by
        :func:`agent.codec.yuv.to_bgr` (video decoded by the ffmpeg child), if any; with the ``yuv`` setting the
        group codes the pictures instead, half the samples (wire format stage YUV420)."""
        pixel_format = pixel_format_of(image)
        image = np.ascontiguousarray(image)
        if self._yuv and not force_key and not self._fits_group(image, picture):
            force_key = True  # the group codes pictures, and this frame came without one
        decision = self._selector.decide(image, capture_time_ns, force=force_key, picture=picture)
        if self._key is None or self._previous is None:
            decision = KeyDecision(True, decision.reason, decision.ssim) if not decision.is_key else decision
        if decision.is_key:
            self._yuv = self._picture_usable(image, picture)
        planes = (
            yuv.tall(picture, image.shape[1], image.shape[0])
            if self._yuv and picture is not None
            else to_planes(image)
        )
        seq = self.next_seq
        tolerance = self.settings.tolerance
        self._current = _Held(seq, planes)
        if decision.is_key:
            stages, block_chroma = self._key_recipe(planes, pixel_format)
            payload, recon = encode_planes(
                planes, stages, tolerance=tolerance, zstd_level=self.settings.zstd_level
            )
            key_seq, ref_seq, kind = seq, seq, Kind.KEY
        else:
            assert self._key is not None
            assert self._previous is not None
            payload, recon, stages, ref_seq = self._encode_member(planes, pixel_format)
            key_seq, kind = self._key.seq, Kind.MEMBER
        if recon is planes:
            recon_image = image
        elif self._yuv:
            recon_image = yuv.to_bgr(
                np.ascontiguousarray(recon).data, image.shape[1], image.shape[0], laid_out=True
            )
        else:
            recon_image = from_planes(recon)
        header = RecordHeader(
            camera_id=self.camera_id,
            seq=seq,
            key_seq=key_seq,
            ref_seq=ref_seq,
            kind=kind,
            capture_time_ns=capture_time_ns,
            width=image.shape[1],
            height=image.shape[0],
            pixel_format=pixel_format,
            stages=stages,
            frame_hash=frame_hash(recon_image),
            tolerance=tolerance,
            ssim=float(decision.ssim),
            clock_synced=clock_synced,
        )
        if Stage.CTX in stages and native.ctx_bands(*header.coded_shape[1:]) > 1:
            header = replace(header, banded_planes=True)  # version 8 only where a plane is banded
        held = _Held(seq, recon, self._current.sample if recon is planes else None)
        if decision.is_key:
            # With chained references the key's pixels are never needed again once it is the previous frame.
            self._key = held if self.settings.reference != "previous" else _Held(seq, _NO_PLANES)
            self._kept = None  # a new group's first member estimates every recipe
            self._trial_ok = self._steady_before = False
            self._each_channel = None
            self._block_chroma = block_chroma
            self._intra_seen = None
        self._previous = held
        self._previous_intra = ref_seq == seq
        self.next_seq = seq + 1
        return Record(header, payload)

    def _picture_usable(
        self, image: npt.NDArray[np.uint8], picture: bytes | bytearray | memoryview | None
    ) -> bool:
        """Whether a key's group codes pictures: the ``yuv`` setting, lossless or a tolerance its Y lattice
        takes (1..32: every tolerance the settings allow), an even size, and a picture that converts to exactly
        this frame (checked once a group: a record whose picture did not would fail its frame hash wherever it
        is decoded)."""
        tolerance = self.settings.tolerance
        if not self.settings.yuv or (tolerance and not luma_step(tolerance)):
            return False
        if picture is None or not self._fits_group(image, picture):
            return False
        height, width = image.shape[:2]
        if width % 2 or height % 2:
            return False
        if not np.array_equal(yuv.to_bgr(picture, width, height), image):
            log.warning(
                "a %dx%d frame is not the conversion of the picture it came with: coding the frame",
                width,
                height,
            )
            return False
        return True

    def _fits_group(
        self, image: npt.NDArray[np.uint8], picture: bytes | bytearray | memoryview | None
    ) -> bool:
        """Whether a member can join this picture-coding group: it has a picture of the group's size."""
        height, width = image.shape[:2]
        return picture is not None and image.ndim == 3 and len(picture) == yuv.picture_bytes(width, height)

    def _key_recipe(self, planes: Planes, pixel_format: PixelFormat) -> tuple[tuple[Stage, ...], bool]:
        """The key's stage list, and whether its group lays the chroma out by 2×2 block.

        The block layout pays on decoded 4:2:0 video only (JPEG stills are upsampled smoothly, sensor noise has
        no blocks), and the key tells: its group follows whichever of the key's best estimates with and without
        the layout is smaller, so members estimate no more recipes than before.
        """
        candidates = [
            c for c in intra_stage_lists(self.settings, pixel_format, picture=self._yuv) if fits(c, planes)
        ]
        blocked = [b for b in map(block_chroma_variant, candidates) if b is not None]
        if len(candidates) + len(blocked) == 1:
            return candidates[0], False
        sized = [self._estimate(planes, c, None) for c in (*candidates, *blocked)]
        plain, block = sized[: len(candidates)], sized[len(candidates) :]
        use_blocks = bool(block) and min(c.size for c in block) < min(c.size for c in plain)
        return self._choose(block if use_blocks else plain).stages, use_blocks

    def _group_recipes(self, lists: list[tuple[Stage, ...]]) -> list[tuple[Stage, ...]]:
        """``lists`` as this group codes them: with the chroma laid out by 2×2 block when its key chose that."""
        if not self._block_chroma:
            return lists
        return [block_chroma_variant(stages) or stages for stages in lists]

    def _encode_member(
        self, planes: Planes, pixel_format: PixelFormat
    ) -> tuple[bytes, Planes, tuple[Stage, ...], int]:
        assert self._key is not None
        assert self._previous is not None
        settings = self.settings
        if settings.reference == "key":
            references = [self._key]
        elif settings.reference == "previous" or self._previous.seq == self._key.seq:
            references = [self._previous]
        else:
            references = [self._previous, self._key]
        recipes = [
            (stages, held)
            for held in references
            for stages in self._group_recipes(residual_stage_lists(settings, pixel_format, picture=self._yuv))
            if self._in_colour_mode(stages)
        ]
        trial = self._encode_kept(planes, recipes) if self._trial_ok else None
        if trial is not None and trial.steady:
            return trial.payload, trial.recon, trial.stages, trial.held.seq
        kept, keep = self._estimate_kept(planes, recipes) if trial is None else (None, False)
        if kept is not None and keep:
            sized = [kept]  # it beat the others, intra coding included, and the scene has not changed since
        else:
            sized = self._estimate_all(planes, recipes, kept)
        best_size = min(_with_margin(c.size, c.stages) for c in sized)
        poor = best_size * INTRA_WORTH_TRYING_RATIO > planes.nbytes / self._sample_fraction(planes)
        if not keep and poor and self._intra_may_win(best_size):
            # A poor residual (a scene change, sparse stills): intra coding may win.
            intra = [
                self._estimate(planes, stages, None)
                for stages in self._group_recipes(
                    intra_stage_lists(settings, pixel_format, picture=self._yuv)
                )
                if self._in_colour_mode(stages) and fits(stages, planes)
            ]
            if intra:
                self._intra_seen = (min(_with_margin(c.size, c.stages) for c in intra), self.next_seq)
            sized += intra
        chosen = self._choose(sized)
        stages, held = chosen.stages, chosen.held
        if trial is not None and trial.stages == stages and trial.held is held:
            payload, recon = trial.payload, trial.recon  # the kept recipe is still the best: coded already
        else:
            payload, recon = encode_planes(
                planes,
                stages,
                reference=None if held is None else held.planes,
                tolerance=settings.tolerance,
                zstd_level=settings.zstd_level,
            )
        self._kept = None if held is None else (stages, held is self._key, chosen.size, len(payload))
        # Two steady estimates in a row start trials: after one, trials on Intel often had to code again.
        self._trial_ok = keep and self._steady_before
        self._steady_before = keep
        return payload, recon, stages, self.next_seq if held is None else held.seq

    def _intra_may_win(self, best_size: float) -> bool:
        """Whether to estimate intra coding for a member whose residual is poor: unless intra's last estimate in
        this group, fewer than KEEP_RECIPE_FRAMES members ago, was INTRA_CLOSE_RATIO or more times this best
        residual (an intra frame's size moves slowly where a residual's jumps at a scene change)."""
        if self._intra_seen is None:
            return True
        size, seq = self._intra_seen
        return self.next_seq - seq >= KEEP_RECIPE_FRAMES or best_size * INTRA_CLOSE_RATIO >= size

    def _encode_kept(self, planes: Planes, recipes: list[tuple[tuple[Stage, ...], _Held]]) -> _Trial | None:
        """The member coded with the last member's recipe, and whether its coded size says the scene is still
        steady (None if there is no recipe to keep, or every recipe is due to be estimated).

        Once an estimate has found the scene steady (``_estimate_kept``), the next members are coded with the
        kept recipe outright and their coded sizes are the check, so that a steady scene pays no estimate at
        all. A trial whose size moved by more than KEEP_RECIPE_CHANGE goes back to estimating; its coded frame
        is used if the kept recipe still wins. Only after a steady estimate: on a scene whose best recipe flips
        from frame to frame (Intel: its source's frame types), trials would code many frames twice.
        """
        kept = self._kept_recipe(recipes)
        if kept is None:
            return None
        stages, held, estimate, coded = kept
        payload, recon = encode_planes(
            planes, stages, reference=held.planes, tolerance=0, zstd_level=self.settings.zstd_level
        )
        steady = abs(len(payload) - coded) <= KEEP_RECIPE_CHANGE * coded
        if steady:
            self._since_all += 1
            self._kept = (stages, held is self._key, estimate, len(payload))
        return _Trial(payload, recon, stages, held, steady)

    def _kept_recipe(
        self, recipes: list[tuple[tuple[Stage, ...], _Held]]
    ) -> tuple[tuple[Stage, ...], _Held, float, int] | None:
        """The last member's recipe among this member's (stages, reference, estimate, coded bytes), or None when
        there is none to keep or every recipe is due to be estimated."""
        if self._kept is None or self._since_all >= KEEP_RECIPE_FRAMES or self.settings.tolerance:
            return None
        stages, of_key, estimate, coded = self._kept
        held = next((h for s, h in recipes if s == stages and (h is self._key) == of_key), None)
        return None if held is None else (stages, held, estimate, coded)

    def _estimate_kept(
        self, planes: Planes, recipes: list[tuple[tuple[Stage, ...], _Held]]
    ) -> tuple[_Sized | None, bool]:
        """The last member's recipe estimated (None if there is none to keep), and whether to keep it alone
        (``_encode_kept`` then codes the members after the next with it outright).

        On a steady scene the best recipe stays the best (PETS: one change in 148 members), so estimating the
        others every frame is wasted (a third of the encoder's time beside the coder). They are estimated
        again every KEEP_RECIPE_FRAMES members, and as soon as the kept recipe's estimate moves by more than
        KEEP_RECIPE_CHANGE (the scene, or the source's own coding, changed). Lossless only: with a tolerance
        the choice to quantise or not is the sensitive one, and keeping it cost 0.5-1 % bytes at T=2.
        """
        kept = self._kept_recipe(recipes)
        if kept is None:
            return None, False
        stages, held, size, _coded = kept
        estimate = self._estimate(planes, stages, held)
        keep = abs(estimate.size - size) <= KEEP_RECIPE_CHANGE * size
        self._since_all += keep
        return estimate, keep

    def _estimate_all(
        self, planes: Planes, recipes: list[tuple[tuple[Stage, ...], _Held]], done: _Sized | None
    ) -> list[_Sized]:
        """Every recipe estimated, ``done`` (one of them, already estimated) reused."""
        self._since_all = 0
        return [
            done
            if done is not None and done.stages == stages and done.held is held
            else self._estimate(planes, stages, held)
            for stages, held in recipes
        ]

    @staticmethod
    def _sample_fraction(planes: Planes) -> float:
        rows = sample_rows(planes.shape[1], planes.shape[2])
        return 1.0 if isinstance(rows, slice) else planes.shape[1] / len(rows)

    def _choose(self, sized: list[_Sized]) -> _Sized:
        """The recipe to use among estimated ones: the smallest, once quantising ones pay their margin.

        A quantising recipe must win clearly (QUANTISED_MUST_SAVE): its reconstruction error re-appears as noise
        in every later residual of the chain, a cost the size of this one frame does not show. Except where the
        frame before was intra coded too and quantised intra is the smallest outright: in a run of intra frames
        (stills, cuts) no residual inherits the error.

        On colour frames with a tolerance the group's first member also settles how the group quantises: each
        channel on its own only where that is estimated EACH_CHANNEL_MUST_SAVE smaller than B and R following
        G (sensor noise, independent in each channel), else B and R follow G (decoded video). The choice holds
        for the group: once a frame quantised each channel, the chroma of every later residual carries the
        difference of their errors, and following G looks far costlier than it is (0.3× of its size on PETS).
        A key is held to the same margin, for the same reason, but decides nothing.
        """
        smallest = min(sized, key=lambda c: c.size)
        if self._previous_intra and smallest.held is None and _quantising(smallest.stages):
            return smallest
        each = min((c.size for c in sized if _each_channel(c.stages)), default=None)
        following = min((c.size for c in sized if _follows_g(c.stages)), default=None)
        if each is not None and following is not None:
            clearly = each <= (1.0 - EACH_CHANNEL_MUST_SAVE) * following
            if any(c.held is not None for c in sized):
                self._each_channel = clearly
            sized = [c for c in sized if clearly or not _each_channel(c.stages)]
        return min(sized, key=lambda c: _with_margin(c.size, c.stages))

    def _in_colour_mode(self, stages: tuple[Stage, ...]) -> bool:
        """Whether a recipe quantises colour the way this group does (any recipe, before that is settled)."""
        if self._each_channel is None:
            return True
        return not _follows_g(stages) if self._each_channel else not _each_channel(stages)

    def _estimate(self, planes: Planes, stages: tuple[Stage, ...], held: _Held | None) -> _Sized:
        """Coded size of a sample of row bands: picks the recipe at a fraction of the cost of trying them all."""
        rows = sample_rows(planes.shape[1], planes.shape[2])
        if Stage.JPEG_CHROMA in stages and not isinstance(rows, slice):
            return _Sized(_jpeg_estimate(planes, stages, rows, self.settings.tolerance), stages, None)
        current = self._current if planes is self._current.planes else _Held(-1, planes)
        sample = _sample_of(current, rows)
        reference = None if held is None else _sample_of(held, rows)
        tolerance = self.settings.tolerance
        if Stage.CTX in stages:  # CTX counts without coding, in about half the time
            data, _ = pixel_stages(sample, stages, reference=reference, tolerance=tolerance)
            return _Sized(native.ctx_cost(data), stages, held)
        payload, _ = encode_planes(sample, stages, reference=reference, tolerance=tolerance, zstd_level=1)
        return _Sized(float(len(payload)), stages, held)


class _Trial(NamedTuple):
    """A member coded with the kept recipe."""

    payload: bytes
    recon: Planes
    stages: tuple[Stage, ...]
    held: _Held
    steady: bool
    """Its coded size moved by at most KEEP_RECIPE_CHANGE since the member before."""


class _Sized(NamedTuple):
    """An estimated recipe."""

    size: float
    """Estimated bytes of the sample bands."""
    stages: tuple[Stage, ...]
    held: _Held | None
    """The reference, or None for intra coding."""


def _quantising(stages: tuple[Stage, ...]) -> bool:
    return any(s in QUANTISING_STAGES for s in stages)


def _follows_g(stages: tuple[Stage, ...]) -> bool:
    return any(s in COLOUR_FOLLOWS_G for s in stages)


def _each_channel(stages: tuple[Stage, ...]) -> bool:
    """A colour recipe that quantises B, G and R each on its own (RCT then takes their chroma)."""
    return Stage.RCT in stages and _quantising(stages)


def _with_margin(size: float, stages: tuple[Stage, ...]) -> float:
    return size / (1.0 - QUANTISED_MUST_SAVE) if _quantising(stages) else size


JPEG_MARGIN = 4
"""Rows of context above and below each sample band for JPEG_CHROMA's estimate (even, and at least 2)."""


def _jpeg_estimate(
    planes: Planes, stages: tuple[Stage, ...], rows: npt.NDArray[np.intp], tolerance: int
) -> float:
    """JPEG_CHROMA's estimate on the sample bands, each coded with JPEG_MARGIN rows around it and costed
    without them: the upsampling reads the chroma rows above and below, which stacked bands would not give
    it (a band's edge rows would look like misses, 2 of its 8)."""
    height = planes.shape[1]
    pieces: list[Planes] = []
    quarters: list[Planes] = []
    for start in rows[::SAMPLE_BAND]:
        low, high = max(0, int(start) - JPEG_MARGIN), min(height, int(start) + SAMPLE_BAND + JPEG_MARGIN)
        coded, _ = pixel_stages(planes[:, low:high], stages, tolerance=tolerance)
        inner = int(start) - low
        pieces.append(coded[:3, inner : inner + SAMPLE_BAND])
        quarters.append(coded[3:, inner // 2 : (inner + SAMPLE_BAND) // 2])
    return native.ctx_cost(np.concatenate(pieces, axis=1)) + native.ctx_cost(np.concatenate(quarters, axis=1))


SAMPLE_BAND = 8
SAMPLE_SAMPLES = 8 * SAMPLE_BAND * 768
"""Samples a plane's bands add up to, where the frame is wide enough: eight bands of a 768-wide frame."""
SAMPLE_BANDS = (4, 8)
"""Fewest and most bands: 8 up to 768 pixels wide, fewer on wider frames (4 at 1080p), never under 4."""


def _sample_of(held: _Held, rows: npt.NDArray[np.intp] | slice) -> Planes:
    """``held``'s estimate sample, taken on first use (``rows`` depends on the planes' shape alone)."""
    if held.sample is None:
        held.sample = held.planes[:, rows]
    return held.sample


@functools.lru_cache(maxsize=8)
def sample_rows(height: int, width: int) -> npt.NDArray[np.intp] | slice:
    """Bands of 8 rows spread evenly over the frame, or the whole frame when it is too small for that.

    The estimate's accuracy follows the samples it sees, its cost the rows: 1080p frames get 4 bands (61 K
    samples a plane, against 49 K for 8 bands at 768 wide) instead of one every 128 rows. Measured on the
    1080p stills: the same ratio at T=0 and T=2, 1.4 ms (6 %) less a frame. Fewer bands on 768-wide video
    cost up to 8 % at T=2, whose quantise-or-not choice is the most sensitive (docs/benchmarks.md).
    """
    fewest, most = SAMPLE_BANDS
    bands = min(most, max(fewest, -(-SAMPLE_SAMPLES // (SAMPLE_BAND * width))))
    every = (height // bands) & ~1  # bands start on even rows, so 2×2 chroma blocks stay whole (BLOCK_CHROMA)
    if every < 2 * SAMPLE_BAND:
        return slice(None)
    starts = np.arange(0, height - SAMPLE_BAND + 1, every)
    rows = (starts[:, None] + np.arange(SAMPLE_BAND)[None, :]).ravel()
    rows.setflags(write=False)  # cached: shared by every caller
    return rows
