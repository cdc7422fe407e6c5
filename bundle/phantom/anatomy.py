"""Reference skeleton, soft tissue and organs of the phantom, and one patient's size and pose.

Coordinates:
    *reference mm*: a 1750 mm tall reference patient, ``x`` towards the patient's LEFT (the image right on an anterior
    view), ``y`` from the vertex towards the feet, origin on the midline at the vertex.
    *image mm*: millimetres from the top-left corner of one view, ``x`` = column, ``y`` = row (pixel centres at
    ``(index + 0.5) * pixel_mm``). Both views are rendered in the anterior layout (patient's right on the image left);
    the acquired posterior view is its left-right mirror.

The skeleton is a point cloud built once (:func:`reference_skeleton`): every bone, the kidneys and the bladder are
filled with points about 1.4 mm apart, each carrying its uptake, depth (0 anterior surface … 1 posterior surface),
bone, body part and local bone axis. A patient is an affine map per body part (size, arm/leg/head pose, tilt, shift)
applied to that cloud, then splatted onto the pixel grid (:func:`splat`), so no per-patient drawing is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

REFERENCE_HEIGHT_MM = 1750.0
SAMPLE_SPACING_MM = 1.4
ATTENUATION_PER_MM = 0.011  # effective (broad-beam) attenuation of 140 keV photons in soft tissue

PARTS = ("trunk", "head", "upper_arm_R", "forearm_R", "upper_arm_L", "forearm_L", "leg_R", "leg_L", "bladder")
PART_INDEX = {name: i for i, name in enumerate(PARTS)}
KIND_BONE, KIND_KIDNEY, KIND_BLADDER = 0, 1, 2

SIDES = {"R": -1.0, "L": 1.0}  # sign of x: the patient's right is at negative x

# Joint pivots of the reference patient (x for the left side; the right side mirrors it).
SHOULDER = (180.0, 345.0)
ELBOW = (196.0, 648.0)
HIP = (92.0, 882.0)
NECK_PIVOT = (0.0, 240.0)
PELVIS_CENTRE = (0.0, 880.0)
BLADDER_BASE = (0.0, 900.0)

# Vertebral levels: (name, centre y, body width, body height) in reference mm.
CERVICAL = [(f"C{i + 1}", 195.0 + 15.0 * i, 22.0 + 1.3 * i, 11.0) for i in range(7)]
THORACIC = [(f"T{i + 1}", 295.0 + 27.5 * (i + 0.5), 30.0 + 0.9 * i, 21.0) for i in range(12)]
LUMBAR = [(f"L{i + 1}", 625.0 + 35.0 * (i + 0.5), 44.0 + 2.0 * i, 28.0) for i in range(5)]
VERTEBRAE = CERVICAL + THORACIC + LUMBAR

# Ribs 1..12 (left side): lateral half-width, posterior drop, anterior end x, anterior descent (reference mm).
RIB_LATERAL_X = (70, 100, 120, 134, 143, 148, 150, 149, 146, 140, 128, 112)
RIB_POSTERIOR_DROP = (15, 22, 28, 32, 35, 38, 40, 42, 42, 40, 35, 28)
RIB_ANTERIOR_X = (30, 35, 38, 42, 48, 55, 65, 85, 100, 115, 0, 0)
RIB_ANTERIOR_DESCENT = (40, 55, 65, 72, 78, 82, 85, 80, 70, 55, 0, 0)

# Soft-tissue outline of the trunk: y knots, half-widths and antero-posterior thickness (reference mm).
TRUNK_Y = (200, 240, 275, 300, 330, 380, 460, 560, 650, 720, 800, 870, 920, 950, 968)
TRUNK_HALF_WIDTH = (48, 52, 62, 130, 178, 172, 160, 150, 140, 148, 170, 182, 175, 120, 0)
TRUNK_THICKNESS = (110, 115, 130, 170, 200, 215, 225, 225, 220, 220, 220, 215, 200, 150, 100)

# Tapered capsules of the limbs (left side): part, start, end, radius start/end, thickness start/end (mm).
LIMB_CAPSULES = (
    ("upper_arm", (184, 345), (196, 640), 44, 38, 95, 90),
    ("forearm", (197, 650), (208, 890), 36, 26, 75, 55),
    ("forearm", (208, 905), (212, 1060), 32, 22, 35, 30),
    ("leg", (95, 880), (100, 1235), 88, 55, 140, 100),
    ("leg", (100, 1240), (98, 1680), 55, 34, 105, 65),
    ("leg", (100, 1680), (102, 1752), 38, 34, 70, 60),
)
HEAD_ELLIPSE = ((0.0, 112.0), (80.0, 112.0), 190.0)  # centre, semi-axes, thickness
JAW_CAPSULE = ((0.0, 150.0), (0.0, 200.0), 70.0, 42.0, 150.0, 120.0)  # start, end, radii, thicknesses
# Soft-tissue activity per mm relative to the trunk (blood pool and viscera vs. muscle and fat of the limbs).
SOFT_TISSUE_ACTIVITY = {"trunk": 1.0, "head": 0.75, "upper_arm": 0.6, "forearm": 0.55, "leg": 0.5}


@dataclass(frozen=True)
class SkeletonTemplate:
    """Point cloud of the reference skeleton and organs, sorted by body part.

    Attributes:
        points: reference mm, shape (N, 2) as (x, y).
        uptake: uptake per unit area of each point, shape (N,).
        depth: 0 (anterior surface) … 1 (posterior surface), shape (N,).
        axis: local bone axis angle in radians (reference frame), shape (N,).
        bone: index into ``bone_names``, shape (N,).
        part: index into :data:`PARTS`, shape (N,).
        kind: tissue kind (:data:`KIND_BONE`, :data:`KIND_KIDNEY`, :data:`KIND_BLADDER`), shape (N,).
        bone_names: name of every bone index.
        part_slices: the points of each part, ``points[part_slices[p]]``.
        rib_curves: centre line of each rib, key ``(side, k)``, value (M, 2) reference mm, posterior end first.
    """

    points: np.ndarray
    uptake: np.ndarray
    depth: np.ndarray
    axis: np.ndarray
    bone: np.ndarray
    part: np.ndarray
    kind: np.ndarray
    bone_names: tuple[str, ...]
    part_slices: tuple[slice, ...]
    rib_curves: dict[tuple[str, int], np.ndarray] = field(repr=False)

    def bone_id(self, name: str) -> int:
        """Index of bone ``name`` in ``bone_names``."""
        return self.bone_names.index(name)

    def points_of(self, names: Sequence[str]) -> np.ndarray:
        """Indices of the points belonging to any of the bones ``names``."""
        ids = [self.bone_names.index(n) for n in names if n in self.bone_names]
        return np.flatnonzero(np.isin(self.bone, ids))


class _TemplateBuilder:
    """Fills shapes with jittered grid points; the jitter is fixed so the template is the same in every process."""

    def __init__(self, spacing: float = SAMPLE_SPACING_MM) -> None:
        self.spacing = spacing
        self._rng = np.random.default_rng(20210904)
        self._chunks: list[tuple[np.ndarray, ...]] = []
        self.bone_names: list[str] = []
        self.rib_curves: dict[tuple[str, int], np.ndarray] = {}

    def _bone(self, name: str) -> int:
        if name not in self.bone_names:
            self.bone_names.append(name)
        return self.bone_names.index(name)

    def _grid(self, lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
        """Jittered grid points covering the box ``lo``–``hi`` (reference mm), shape (N, 2)."""
        s = self.spacing
        xs = np.arange(lo[0] + s / 2, hi[0], s)
        ys = np.arange(lo[1] + s / 2, hi[1], s)
        grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        return grid + self._rng.uniform(-0.35 * s, 0.35 * s, grid.shape)

    def add(
        self,
        points: np.ndarray,
        *,
        bone: str,
        part: str,
        uptake: float,
        depth: float | np.ndarray,
        axis: float | np.ndarray,
        kind: int = KIND_BONE,
        profile: np.ndarray | None = None,
    ) -> None:
        """Append the points (N, 2) of one shape of ``bone`` with their uptake, depth and axis."""
        n = len(points)
        if n == 0:
            return
        bone_id = self._bone(bone)
        weight = np.full(n, uptake, np.float64) if profile is None else uptake * profile
        self._chunks.append(
            (
                points.astype(np.float32),
                weight.astype(np.float32),
                np.broadcast_to(np.asarray(depth, np.float32), (n,)).copy(),
                np.broadcast_to(np.asarray(axis, np.float32), (n,)).copy(),
                np.full(n, bone_id, np.int16),
                np.full(n, PART_INDEX[part], np.int8),
                np.full(n, kind, np.int8),
            )
        )

    def ellipse(
        self,
        centre: Sequence[float],
        semi: Sequence[float],
        angle: float = 0.0,
        *,
        ellipsoid: bool = False,
        holes: Sequence[tuple[Sequence[float], Sequence[float]]] = (),
        **kw,
    ) -> None:
        """Filled ellipse; ``ellipsoid`` weights points by the chord of an ellipsoid (organs)."""
        r = max(semi)
        pts = self._grid((centre[0] - r, centre[1] - r), (centre[0] + r, centre[1] + r))
        c, s = math.cos(angle), math.sin(angle)
        d = pts - np.asarray(centre)
        u, v = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
        rho2 = (u / semi[0]) ** 2 + (v / semi[1]) ** 2
        keep = rho2 <= 1
        for hole_centre, hole_semi in holes:
            h = pts - np.asarray(hole_centre)
            keep &= (h[:, 0] / hole_semi[0]) ** 2 + (h[:, 1] / hole_semi[1]) ** 2 > 1
        profile = 1.5 * np.sqrt(1 - rho2[keep]) if ellipsoid else None
        axis = angle + (math.pi / 2 if semi[1] > semi[0] else 0.0)
        self.add(pts[keep], axis=axis, profile=profile, **kw)

    def ring(self, centre: Sequence[float], semi: Sequence[float], thickness: float, **kw) -> None:
        """Elliptical annulus of the given thickness (outer boundary = ``semi``)."""
        r = max(semi)
        pts = self._grid((centre[0] - r, centre[1] - r), (centre[0] + r, centre[1] + r))
        d = pts - np.asarray(centre)
        outer = (d[:, 0] / semi[0]) ** 2 + (d[:, 1] / semi[1]) ** 2 <= 1
        inner = (d[:, 0] / (semi[0] - thickness)) ** 2 + (d[:, 1] / (semi[1] - thickness)) ** 2 <= 1
        keep = outer & ~inner
        axis = np.arctan2(d[keep, 1], d[keep, 0]) + math.pi / 2  # tangent of the ring
        self.add(pts[keep], axis=axis, **kw)

    def capsule(self, p0: Sequence[float], p1: Sequence[float], width: float, **kw) -> None:
        """Segment ``p0``–``p1`` thickened to ``width``."""
        self.polyline([p0, p1], width, **kw)

    def polyline(
        self,
        vertices: Sequence[Sequence[float]],
        width: float,
        *,
        depth: float | Sequence[float],
        smooth: bool = False,
        **kw,
    ) -> np.ndarray:
        """Band of ``width`` along a polyline (a Catmull-Rom curve if ``smooth``); returns the centre line (M, 2).

        ``depth`` is a scalar or one value per vertex (interpolated along the line).
        """
        v = np.asarray(vertices, np.float64)
        if smooth and len(v) > 2:
            v = _catmull_rom(v, 12)
        seg = np.diff(v, axis=0)
        seg_len = np.hypot(seg[:, 0], seg[:, 1])
        arc = np.concatenate([[0.0], np.cumsum(seg_len)])
        t = np.arange(self.spacing / 2, arc[-1], self.spacing)
        t = np.clip(t + self._rng.uniform(-0.3, 0.3, t.shape) * self.spacing, 0, arc[-1])
        centre = np.stack([np.interp(t, arc, v[:, 0]), np.interp(t, arc, v[:, 1])], axis=-1)
        idx = np.clip(np.searchsorted(arc, t) - 1, 0, len(seg) - 1)
        tangent = seg[idx] / seg_len[idx, None]
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=-1)
        offsets = np.arange(-width / 2 + self.spacing / 2, width / 2, self.spacing)
        offsets = offsets - offsets.mean()
        pts = (centre[:, None, :] + offsets[None, :, None] * normal[:, None, :]).reshape(-1, 2)
        depth_v = np.broadcast_to(np.asarray(depth, np.float64), (len(vertices),))
        depth_t = np.interp(t, np.linspace(0, arc[-1], len(depth_v)), depth_v)
        axis = np.arctan2(tangent[:, 1], tangent[:, 0])
        self.add(pts, depth=np.repeat(depth_t, len(offsets)), axis=np.repeat(axis, len(offsets)), **kw)
        return centre

    def polygon(self, vertices: Sequence[Sequence[float]], *, axis: float = math.pi / 2, **kw) -> None:
        """Filled polygon (even-odd rule)."""
        v = np.asarray(vertices, np.float64)
        pts = self._grid(v.min(axis=0), v.max(axis=0))
        inside = np.zeros(len(pts), bool)
        x, y = pts[:, 0], pts[:, 1]
        for (x0, y0), (x1, y1) in zip(v, np.roll(v, -1, axis=0), strict=True):
            crosses = (y0 > y) != (y1 > y)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
            inside ^= crosses & (x < x_at)
        self.add(pts[inside], axis=axis, **kw)

    def build(self) -> SkeletonTemplate:
        cols = [np.concatenate(c) for c in zip(*self._chunks, strict=True)]
        points, uptake, depth, axis, bone, part, kind = cols
        order = np.argsort(part, kind="stable")
        points, uptake, depth, axis, bone, part, kind = (a[order] for a in cols)
        bounds = np.searchsorted(part, np.arange(len(PARTS) + 1))
        slices = tuple(slice(int(bounds[i]), int(bounds[i + 1])) for i in range(len(PARTS)))
        return SkeletonTemplate(
            points=points,
            uptake=uptake,
            depth=depth,
            axis=axis,
            bone=bone,
            part=part,
            kind=kind,
            bone_names=tuple(self.bone_names),
            part_slices=slices,
            rib_curves=self.rib_curves,
        )


def _catmull_rom(v: np.ndarray, steps: int) -> np.ndarray:
    """Smooth curve through the vertices ``v`` (M, 2), ``steps`` samples per segment."""
    p = np.vstack([2 * v[0] - v[1], v, 2 * v[-1] - v[-2]])
    t = np.linspace(0, 1, steps, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5
            * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    out.append(v[-1:])
    return np.vstack(out)


def _rib_centre_line(k: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre line (M, 2) and depth (M,) of rib ``k`` (1..12) on side ``s`` (-1 right, +1 left), posterior end first."""
    i = k - 1
    y0 = THORACIC[i][1] - 6.0
    lateral, drop = RIB_LATERAL_X[i], RIB_POSTERIOR_DROP[i]
    t = np.linspace(0, 1, 24)
    post = np.stack([s * (20 + (lateral - 20) * t), y0 + drop * t**1.6 - 10 * np.sin(np.pi * t)], axis=-1)
    post_depth = 0.92 - 0.4 * t
    if RIB_ANTERIOR_DESCENT[i] == 0:  # floating ribs 11-12 end laterally
        return post, post_depth
    end_x, descent = RIB_ANTERIOR_X[i], RIB_ANTERIOR_DESCENT[i]
    a = np.linspace(0, 1, 24)[1:]
    ant = np.stack(
        [
            s * (end_x + (lateral - end_x) * np.cos(np.pi / 2 * a**0.8)),
            y0 + drop + descent * (0.55 * a + 0.45 * np.sin(np.pi / 2 * a)),
        ],
        axis=-1,
    )
    return np.vstack([post, ant]), np.concatenate([post_depth, 0.52 - 0.45 * a])


@lru_cache(maxsize=1)
def reference_skeleton() -> SkeletonTemplate:
    """The reference skeleton, kidneys and bladder as a point cloud (built once per process, ~0.2 s)."""
    b = _TemplateBuilder()

    # Skull: calvarium with a brighter rim (bone seen tangentially), dark orbits, facial bones and mandible.
    orbits = [((-30.0, 118.0), (16.0, 13.0)), ((30.0, 118.0), (16.0, 13.0))]
    b.ellipse((0, 108), (72, 98), bone="skull", part="head", uptake=0.34, depth=0.5, holes=orbits)
    b.ring((0, 108), (72, 98), 9.0, bone="skull", part="head", uptake=0.5, depth=0.5)
    b.ellipse((0, 160), (36, 20), bone="face", part="head", uptake=0.75, depth=0.2)
    b.ellipse((0, 138), (9, 16), bone="face", part="head", uptake=0.5, depth=0.1)
    mandible = [(-58, 168), (-55, 200), (-35, 222), (0, 230), (35, 222), (55, 200), (58, 168)]
    b.polyline(mandible, 11, bone="mandible", part="head", uptake=0.55, depth=0.3, smooth=True)

    # Spine: vertebral bodies, pedicles/facets (posterior), spinous processes; sacrum, SI joints, coccyx.
    for name, y, w, h in VERTEBRAE:
        body_uptake = 0.7 if name[0] == "C" else (0.85 if name[0] == "T" else 0.95)
        body_depth = 0.7 if name[0] == "C" else (0.62 if name[0] == "T" else 0.55)
        b.polygon(
            [(-w / 2, y - h / 2), (w / 2, y - h / 2), (w / 2 + 1, y + h / 2), (-w / 2 - 1, y + h / 2)],
            bone=name,
            part="trunk",
            uptake=body_uptake,
            depth=body_depth,
        )
        for s in (-1, 1):
            b.ellipse((s * (w / 2 - 3), y - h / 4), (4.5, 4.5), bone=name, part="trunk", uptake=0.6, depth=0.82)
            if name[0] == "L":
                b.capsule((s * w / 2, y), (s * (w / 2 + 18), y - 2), 6, bone=name, part="trunk", uptake=0.3, depth=0.8)
        b.ellipse((0, y + h / 3), (4, 5), bone=name, part="trunk", uptake=0.45, depth=0.95)
    b.polygon([(-55, 800), (55, 800), (20, 905), (-20, 905)], bone="sacrum", part="trunk", uptake=0.8, depth=0.85)
    b.capsule((0, 905), (0, 925), 10, bone="coccyx", part="trunk", uptake=0.4, depth=0.9)

    for side, s in SIDES.items():
        b.capsule((s * 48, 805), (s * 36, 872), 10, bone=f"si_joint_{side}", part="trunk", uptake=0.95, depth=0.85)
        # Pelvis: iliac wing with crest rim and ASIS, acetabulum, obturator ring (pubis + ischium), tuberosity.
        wing = [(50, 805), (58, 760), (95, 738), (135, 745), (158, 775), (150, 800), (118, 840), (108, 868), (72, 880)]
        wing += [(52, 860)]
        b.polygon([(s * x, y) for x, y in wing], bone=f"iliac_{side}", part="trunk", uptake=0.5, depth=0.5)
        crest = [(s * 58, 760), (s * 95, 738), (s * 135, 745), (s * 158, 775)]
        b.polyline(crest, 8, bone=f"iliac_{side}", part="trunk", uptake=0.45, depth=0.5, smooth=True)
        b.ellipse((s * 152, 790), (9, 9), bone=f"iliac_{side}", part="trunk", uptake=0.5, depth=0.25)
        b.ring((s * 92, 880), (31, 31), 8, bone=f"acetabulum_{side}", part="trunk", uptake=0.6, depth=0.5)
        b.ring((s * 55, 925), (32, 26), 11, bone=f"pubis_{side}", part="trunk", uptake=0.65, depth=0.4)
        b.ellipse((s * 62, 955), (15, 12), bone=f"ischium_{side}", part="trunk", uptake=0.7, depth=0.7)

        # Thorax: ribs, clavicle, sternoclavicular joint, scapula (blade, spine, acromion, glenoid, inferior angle).
        for k in range(1, 13):
            line, depth = _rib_centre_line(k, s)
            b.rib_curves[(side, k)] = b.polyline(
                line, 8.0, bone=f"rib_{side}{k:02d}", part="trunk", uptake=0.55, depth=depth
            )
        clavicle = [(s * 25, 335), (s * 70, 322), (s * 120, 325), (s * 160, 316), (s * 182, 318)]
        b.polyline(clavicle, 12, bone=f"clavicle_{side}", part="trunk", uptake=0.55, depth=0.1, smooth=True)
        b.ellipse((s * 22, 338), (8, 8), bone=f"sternoclavicular_{side}", part="trunk", uptake=0.65, depth=0.05)
        blade = [(78, 330), (160, 345), (150, 400), (108, 480), (85, 450), (75, 380)]
        b.polygon([(s * x, y) for x, y in blade], bone=f"scapula_{side}", part="trunk", uptake=0.28, depth=0.93)
        spine = [(s * 80, 358), (s * 150, 335), (s * 178, 321)]
        b.polyline(spine, 10, bone=f"scapula_{side}", part="trunk", uptake=0.4, depth=0.93)
        b.ellipse((s * 106, 475), (9, 9), bone=f"scapula_{side}", part="trunk", uptake=0.3, depth=0.93)
        b.ellipse((s * 184, 318), (14, 9), bone=f"acromion_{side}", part="trunk", uptake=0.6, depth=0.7)
        b.ellipse((s * 164, 350), (7, 18), bone=f"glenoid_{side}", part="trunk", uptake=0.6, depth=0.6)

        # Kidneys (posterior, upper pole medial): faint organs, not bone.
        b.ellipse(
            (s * 58, 680), (26, 50), s * -0.26, bone=f"kidney_{side}", part="trunk", uptake=1.0, depth=0.75,
            kind=KIND_KIDNEY, ellipsoid=True,
        )  # fmt: skip

        # Arm: humerus (head, shaft in two halves, distal), forearm (radius, ulna, olecranon), wrist, hand.
        upper, fore = f"upper_arm_{side}", f"forearm_{side}"
        b.ellipse((s * 182, 348), (24, 26), bone=f"humerus_head_{side}", part=upper, uptake=0.75, depth=0.5)
        b.capsule((s * 186, 372), (s * 190, 500), 20, bone=f"humerus_upper_{side}", part=upper, uptake=0.38, depth=0.5)
        b.capsule((s * 190, 500), (s * 195, 622), 20, bone=f"humerus_lower_{side}", part=upper, uptake=0.38, depth=0.5)
        b.ellipse((s * 197, 640), (30, 14), bone=f"elbow_{side}", part=upper, uptake=0.6, depth=0.5)
        b.capsule((s * 205, 660), (s * 213, 885), 11, bone=f"radius_{side}", part=fore, uptake=0.34, depth=0.5)
        b.capsule((s * 189, 655), (s * 195, 890), 10, bone=f"ulna_{side}", part=fore, uptake=0.34, depth=0.5)
        b.ellipse((s * 190, 658), (9, 9), bone=f"ulna_{side}", part=fore, uptake=0.5, depth=0.7)
        b.ellipse((s * 210, 893), (16, 9), bone=f"radius_{side}", part=fore, uptake=0.55, depth=0.5)
        b.ellipse((s * 206, 915), (22, 15), bone=f"wrist_{side}", part=fore, uptake=0.72, depth=0.5)
        for dx, finger_len in zip((-16, -7, 1, 9, 17), (50, 75, 80, 75, 60), strict=True):
            base, knuckle = (s * (206 + dx), 930), (s * (206 + 1.3 * dx), 985)
            tip = (s * (206 + 1.5 * dx), 985 + finger_len)
            b.capsule(base, knuckle, 7, bone=f"hand_{side}", part=fore, uptake=0.38, depth=0.5)
            b.capsule(knuckle, tip, 6, bone=f"hand_{side}", part=fore, uptake=0.25, depth=0.5)

        # Leg: femur (head, neck, trochanters, shaft in two halves, condyles), patella, tibia, fibula, foot.
        leg = f"leg_{side}"
        b.ellipse((s * 92, 882), (23, 23), bone=f"femur_head_{side}", part=leg, uptake=0.8, depth=0.5)
        b.capsule((s * 92, 882), (s * 140, 905), 28, bone=f"femur_neck_{side}", part=leg, uptake=0.55, depth=0.5)
        b.ellipse((s * 150, 900), (18, 24), bone=f"trochanter_{side}", part=leg, uptake=0.75, depth=0.5)
        b.ellipse((s * 118, 932), (9, 9), bone=f"trochanter_{side}", part=leg, uptake=0.5, depth=0.5)
        b.capsule((s * 138, 920), (s * 126, 1010), 26, bone=f"femur_upper_{side}", part=leg, uptake=0.38, depth=0.5)
        b.capsule((s * 126, 1010), (s * 102, 1200), 26, bone=f"femur_lower_{side}", part=leg, uptake=0.38, depth=0.5)
        b.ellipse((s * 100, 1228), (40, 24), bone=f"knee_{side}", part=leg, uptake=1.3, depth=0.5)
        b.ellipse((s * 98, 1272), (38, 16), bone=f"knee_{side}", part=leg, uptake=1.3, depth=0.5)
        b.ellipse((s * 100, 1210), (20, 23), bone=f"patella_{side}", part=leg, uptake=0.5, depth=0.05)
        b.capsule((s * 96, 1290), (s * 92, 1660), 24, bone=f"tibia_{side}", part=leg, uptake=0.38, depth=0.45)
        b.capsule((s * 130, 1300), (s * 118, 1672), 9, bone=f"fibula_{side}", part=leg, uptake=0.22, depth=0.55)
        b.ellipse((s * 130, 1290), (10, 10), bone=f"fibula_{side}", part=leg, uptake=0.45, depth=0.55)
        b.ellipse((s * 90, 1676), (22, 14), bone=f"ankle_{side}", part=leg, uptake=0.72, depth=0.5)
        b.ellipse((s * 116, 1686), (9, 14), bone=f"ankle_{side}", part=leg, uptake=0.6, depth=0.55)
        b.ellipse((s * 100, 1712), (34, 22), bone=f"foot_{side}", part=leg, uptake=0.7, depth=0.6)
        b.ellipse((s * 100, 1740), (30, 12), bone=f"foot_{side}", part=leg, uptake=0.45, depth=0.4)

    # Sternum (anterior): manubrium, body, xiphoid.
    b.polygon([(-25, 335), (25, 335), (16, 378), (-16, 378)], bone="sternum", part="trunk", uptake=0.6, depth=0.05)
    b.capsule((0, 385), (0, 490), 26, bone="sternum", part="trunk", uptake=0.5, depth=0.05)
    b.capsule((0, 495), (0, 515), 10, bone="sternum", part="trunk", uptake=0.4, depth=0.05)

    # Bladder (anterior pelvis) at unit filling; a patient's filling scales the "bladder" part about its base.
    b.ellipse((0, 864), (48, 36), bone="bladder", part="bladder", uptake=1.0, depth=0.3, kind=KIND_BLADDER,
              ellipsoid=True)  # fmt: skip
    return b.build()


# ----------------------------------------------------------------------------------------------------------------
# One patient's size and pose
# ----------------------------------------------------------------------------------------------------------------


def _rotation_about(angle_deg: float, pivot: Sequence[float]) -> np.ndarray:
    """3x3 homogeneous rotation by ``angle_deg`` (positive turns +y towards -x... i.e. clockwise on screen)."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    px, py = pivot
    return np.array([[c, -s, px - c * px + s * py], [s, c, py - s * px - c * py], [0, 0, 1]])


def _scale_about(sx: float, sy: float, pivot: Sequence[float]) -> np.ndarray:
    px, py = pivot
    return np.array([[sx, 0, px * (1 - sx)], [0, sy, py * (1 - sy)], [0, 0, 1]])


@dataclass(frozen=True)
class BodyGeometry:
    """Size and pose of one patient, and where the patient lies in the field of view.

    Angles in degrees. ``arm_abduction`` and friends are (right, left). Lengths in mm.
    """

    height_mm: float
    build: float
    thickness_factor: float
    arm_abduction: tuple[float, float]
    elbow_flexion: tuple[float, float]
    leg_abduction: tuple[float, float]
    head_tilt: float
    body_tilt: float
    centre_x_mm: float
    top_mm: float
    bladder_fill: tuple[float, float]
    pose: str
    pixel_mm: tuple[float, float]  # (row, column) pixel size

    @property
    def scale(self) -> tuple[float, float]:
        """(lateral, vertical) scale from the reference patient."""
        s = self.height_mm / REFERENCE_HEIGHT_MM
        return s * self.build, s

    def part_matrices(self) -> np.ndarray:
        """Affine map of every part from reference mm to image mm, shape (len(PARTS), 3, 3)."""
        sx, sy = self.scale
        to_image = np.array([[1, 0, self.centre_x_mm], [0, 1, self.top_mm], [0, 0, 1]])
        pelvis = (PELVIS_CENTRE[0] * sx, PELVIS_CENTRE[1] * sy)
        glob = to_image @ _rotation_about(self.body_tilt, pelvis) @ np.diag([sx, sy, 1.0])
        mats = {"trunk": glob, "head": glob @ _rotation_about(self.head_tilt, NECK_PIVOT)}
        for i, (side, s) in enumerate(SIDES.items()):
            shoulder = (s * SHOULDER[0], SHOULDER[1])
            elbow = (s * ELBOW[0], ELBOW[1])
            upper = _rotation_about(-s * self.arm_abduction[i], shoulder)
            mats[f"upper_arm_{side}"] = glob @ upper
            mats[f"forearm_{side}"] = glob @ upper @ _rotation_about(s * self.elbow_flexion[i], elbow)
            mats[f"leg_{side}"] = glob @ _rotation_about(-s * self.leg_abduction[i], (s * HIP[0], HIP[1]))
        mats["bladder"] = glob @ _scale_about(*self.bladder_fill, BLADDER_BASE)
        return np.stack([mats[p] for p in PARTS])


def draw_arm_pose(rng: np.random.Generator, hands_on_abdomen: bool) -> tuple[np.ndarray, np.ndarray]:
    """(abduction, elbow flexion) of both arms in degrees, each (2,): at the sides, or hands on the abdomen."""
    abduction = rng.uniform(-1.0, 7.0, 2) if not hands_on_abdomen else rng.uniform(0.0, 6.0, 2)
    flexion = rng.uniform(38, 52, 2) if hands_on_abdomen else rng.uniform(0, 8, 2)
    return abduction, flexion


def draw_posture(rng: np.random.Generator, fov_w: float) -> dict[str, Any]:
    """Leg abduction, head and body tilt and the body's centre on the table (field of view ``fov_w`` mm wide): the
    :class:`BodyGeometry` fields a patient changes from one scan to the next."""
    return {
        "leg_abduction": tuple(float(a) for a in rng.uniform(-1.0, 4.0, 2)),
        "head_tilt": float(rng.normal(0, 2.5)),
        "body_tilt": float(rng.normal(0, 1.2)),
        "centre_x_mm": float(fov_w / 2 + rng.normal(0, 8)),
    }


def sample_body_geometry(
    rng: np.random.Generator, view_shape: tuple[int, int], pixel_mm: tuple[float, float]
) -> BodyGeometry:
    """Draw a patient's size and pose that fits the field of view of one view of shape ``view_shape`` (H, W/2)."""
    fov_h, fov_w = view_shape[0] * pixel_mm[0], view_shape[1] * pixel_mm[1]
    height = float(np.clip(rng.normal(1690, 85), 1480, 1950))
    height = min(height, 0.93 * fov_h)
    build = float(np.clip(rng.normal(1.0, 0.07), 0.86, 1.2))
    hands_on_abdomen = rng.random() < 0.15
    abduction, flexion = draw_arm_pose(rng, hands_on_abdomen)
    # keep the hands inside the field of view: narrow the arms, then the build, until they fit
    half_fov = fov_w / 2 - 6.0
    for _ in range(40):
        s = height / REFERENCE_HEIGHT_MM
        reach = s * build * _arm_reach(abduction, flexion)
        if reach <= half_fov:
            break
        if abduction.min() > -6:
            abduction = abduction - 1.0
        else:
            build *= 0.98
    geometry = BodyGeometry(
        height_mm=height,
        build=build,
        thickness_factor=float(rng.uniform(0.9, 1.1) * build**1.5),
        arm_abduction=(float(abduction[0]), float(abduction[1])),
        elbow_flexion=(float(flexion[0]), float(flexion[1])),
        **draw_posture(rng, fov_w),
        top_mm=0.0,
        bladder_fill=(1.0, 1.0),
        pose="hands_on_abdomen" if hands_on_abdomen else "arms_at_sides",
        pixel_mm=pixel_mm,
    )
    top_max = fov_h - height - 4 * pixel_mm[0]
    top = float(np.clip(fov_h * rng.uniform(0.035, 0.075), 2 * pixel_mm[0], top_max))
    fill = float(np.exp(rng.normal(0.0, 0.3)))
    fill = min(fill, 1.7)
    return replace(geometry, top_mm=top, bladder_fill=(fill**0.4, fill**0.6))


def _arm_reach(abduction: np.ndarray, flexion: np.ndarray) -> float:
    """Largest |x| (reference mm, unscaled) reached by either arm's soft tissue in the given pose."""
    reach = 0.0
    for i, s in enumerate(SIDES.values()):
        upper = _rotation_about(-s * abduction[i], (s * SHOULDER[0], SHOULDER[1]))
        fore = upper @ _rotation_about(s * flexion[i], (s * ELBOW[0], ELBOW[1]))
        for part, p0, p1, r0, r1, _, _ in LIMB_CAPSULES[:3]:
            m = upper if part == "upper_arm" else fore
            for p, r in ((p0, r0), (p1, r1)):
                x = (m @ np.array([s * p[0], p[1], 1.0]))[0]
                reach = max(reach, abs(x) + r)
    return reach


def transform_points(template: SkeletonTemplate, matrices: np.ndarray) -> np.ndarray:
    """Image-mm positions of all template points, shape (N, 2)."""
    out = np.empty_like(template.points)
    for p, sl in enumerate(template.part_slices):
        m = matrices[p].astype(np.float32)
        out[sl] = template.points[sl] @ m[:2, :2].T + m[:2, 2]
    return out


def map_point(matrices: np.ndarray, part: int, xy: Sequence[float]) -> np.ndarray:
    """Image-mm position of one reference point of body part ``part``, shape (2,)."""
    return (matrices[part] @ np.array([xy[0], xy[1], 1.0]))[:2]


def map_angle(matrices: np.ndarray, part: int, angle: float) -> float:
    """Image-frame angle of a reference-frame direction ``angle`` (radians) on body part ``part``."""
    m = matrices[part][:2, :2]
    d = m @ np.array([math.cos(angle), math.sin(angle)])
    return math.atan2(d[1], d[0])


def splat(
    points_mm: np.ndarray, weights: np.ndarray, shape: tuple[int, int], pixel_mm: tuple[float, float]
) -> np.ndarray:
    """Bilinearly splat weighted points onto a pixel grid.

    Args:
        points_mm: image-mm positions, shape (N, 2) as (x, y).
        weights: shape (C, N), one row per output channel (e.g. anterior and posterior view).
        shape: (H, W) of one channel.
        pixel_mm: (row, column) pixel size.

    Returns:
        float32 array (C, H, W): the sum of the weights falling on each pixel.
    """
    h, w = shape
    col = points_mm[:, 0] * np.float32(1 / pixel_mm[1]) - np.float32(0.5)
    row = points_mm[:, 1] * np.float32(1 / pixel_mm[0]) - np.float32(0.5)
    c0, r0 = np.floor(col), np.floor(row)
    fc, fr = col - c0, row - r0
    c0, r0 = c0.astype(np.intp), r0.astype(np.intp)
    if c0.min() < 0 or r0.min() < 0 or c0.max() >= w - 1 or r0.max() >= h - 1:
        inside = (c0 >= 0) & (c0 < w - 1) & (r0 >= 0) & (r0 < h - 1)
        c0, r0, fc, fr, weights = c0[inside], r0[inside], fc[inside], fr[inside], weights[:, inside]
    idx = r0 * w + c0
    corners = ((idx, (1 - fc) * (1 - fr)), (idx + 1, fc * (1 - fr)), (idx + w, (1 - fc) * fr), (idx + w + 1, fc * fr))
    out = np.zeros((len(weights), h * w), np.float32)
    for channel, wt in enumerate(weights):
        for where, frac in corners:
            np.add.at(out[channel], where, wt * frac)
    return out.reshape(len(weights), h, w)


def attenuation(depth: np.ndarray, thickness: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of photons reaching the anterior and the posterior detector from ``depth`` (0 front … 1 back)."""
    ant = np.exp(-ATTENUATION_PER_MM * thickness * depth)
    post = np.exp(-ATTENUATION_PER_MM * thickness * (1 - depth))
    return ant.astype(np.float32), post.astype(np.float32)


PART_THICKNESS_MM = {  # antero-posterior thickness of each body part of the reference patient
    "trunk": 220.0,
    "head": 190.0,
    "upper_arm_R": 90.0,
    "forearm_R": 60.0,
    "upper_arm_L": 90.0,
    "forearm_L": 60.0,
    "leg_R": 120.0,
    "leg_L": 120.0,
    "bladder": 215.0,
}


def part_thickness(geometry: BodyGeometry) -> np.ndarray:
    """Antero-posterior body thickness (mm) of every part of this patient, shape (len(PARTS),)."""
    per_part = np.array([PART_THICKNESS_MM[p] for p in PARTS], np.float32)
    per_part[[PART_INDEX["trunk"], PART_INDEX["bladder"]]] *= geometry.thickness_factor
    return per_part


# ----------------------------------------------------------------------------------------------------------------
# Soft tissue (rasterised directly: a handful of smooth shapes)
# ----------------------------------------------------------------------------------------------------------------


def _effective_thickness(chord_mm: np.ndarray) -> np.ndarray:
    """Attenuation-weighted source depth seen by one detector for a uniform slab of ``chord_mm``."""
    return -np.expm1(-ATTENUATION_PER_MM * chord_mm) / ATTENUATION_PER_MM


def _pixel_box(lo_mm: np.ndarray, hi_mm: np.ndarray, shape: tuple[int, int], pixel_mm: tuple[float, float]):
    r0 = max(int(lo_mm[1] / pixel_mm[0]) - 1, 0)
    r1 = min(int(hi_mm[1] / pixel_mm[0]) + 2, shape[0])
    c0 = max(int(lo_mm[0] / pixel_mm[1]) - 1, 0)
    c1 = min(int(hi_mm[0] / pixel_mm[1]) + 2, shape[1])
    if r1 <= r0 or c1 <= c0:
        return None
    ys = ((np.arange(r0, r1) + 0.5) * pixel_mm[0]).astype(np.float32)[:, None]
    xs = ((np.arange(c0, c1) + 0.5) * pixel_mm[1]).astype(np.float32)[None, :]
    return (slice(r0, r1), slice(c0, c1)), xs, ys


def render_soft_tissue(geometry: BodyGeometry, shape: tuple[int, int]) -> np.ndarray:
    """Soft-tissue activity seen by a detector, shape (H, W/2); 0 outside the body (air), so ``> 0`` is the body.

    Each pixel holds the attenuation-weighted thickness (mm) of the tissue column times the regional activity of
    :data:`SOFT_TISSUE_ACTIVITY`.
    """
    mats = geometry.part_matrices()
    px = geometry.pixel_mm
    out = np.zeros(shape, np.float32)
    sx, sy = geometry.scale
    radial_scale = math.sqrt(sx * sy)
    thick = geometry.thickness_factor

    # trunk: per row of the reference frame a half-width and a thickness (an elliptic cylinder cross-section)
    trunk = mats[PART_INDEX["trunk"]]
    corners = np.array([[s * max(TRUNK_HALF_WIDTH), y, 1.0] for s in (-1, 1) for y in (TRUNK_Y[0], TRUNK_Y[-1])])
    img = corners @ trunk.T
    box = _pixel_box(img[:, :2].min(0), img[:, :2].max(0), shape, px)
    if box is not None:
        where, xs, ys = box
        inv = np.linalg.inv(trunk)
        xr = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
        yr = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
        hw = np.interp(yr, TRUNK_Y, TRUNK_HALF_WIDTH).astype(np.float32)
        t = np.interp(yr, TRUNK_Y, TRUNK_THICKNESS).astype(np.float32) * thick
        rho2 = np.where(hw > 0, (xr / np.maximum(hw, 1e-3)) ** 2, 2.0)
        chord = t * np.sqrt(np.clip(1 - rho2, 0, None))
        activity = SOFT_TISSUE_ACTIVITY["trunk"] * _effective_thickness(chord)
        np.maximum(out[where], activity, out=out[where])

    # head: an ellipse (reference frame of the head part)
    head = mats[PART_INDEX["head"]]
    (cx, cy), (a, b), t_head = HEAD_ELLIPSE
    centre = head @ np.array([cx, cy, 1.0])
    r = max(a * sx, b * sy) + 2
    box = _pixel_box(centre[:2] - r, centre[:2] + r, shape, px)
    if box is not None:
        where, xs, ys = box
        inv = np.linalg.inv(head)
        xr = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
        yr = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
        rho2 = ((xr - cx) / a) ** 2 + ((yr - cy) / b) ** 2
        chord = t_head * radial_scale * np.sqrt(np.clip(1 - rho2, 0, None))
        np.maximum(out[where], SOFT_TISSUE_ACTIVITY["head"] * _effective_thickness(chord), out=out[where])

    (j0, j1, jr0, jr1, jt0, jt1) = JAW_CAPSULE
    jaw = (head @ np.array([*j0, 1.0]))[:2], (head @ np.array([*j1, 1.0]))[:2]
    radii, thickness = (jr0 * radial_scale, jr1 * radial_scale), (jt0 * radial_scale, jt1 * radial_scale)
    _capsule_max(out, *jaw, radii, thickness, SOFT_TISSUE_ACTIVITY["head"], px)

    # limbs: tapered capsules
    for side, s in SIDES.items():
        for part, p0, p1, r0, r1, t0, t1 in LIMB_CAPSULES:
            m = mats[PART_INDEX[f"{part}_{side}"]]
            a_img = (m @ np.array([s * p0[0], p0[1], 1.0]))[:2]
            b_img = (m @ np.array([s * p1[0], p1[1], 1.0]))[:2]
            radii = (r0 * radial_scale, r1 * radial_scale)
            thickness = (t0 * radial_scale, t1 * radial_scale)
            _capsule_max(out, a_img, b_img, radii, thickness, SOFT_TISSUE_ACTIVITY[part], px)
    return out


def _capsule_max(
    out: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    radii: tuple[float, float],
    thickness: tuple[float, float],
    activity: float,
    pixel_mm: tuple[float, float],
) -> None:
    """Max-composite a tapered capsule's soft-tissue activity into ``out`` (in place)."""
    (r0, r1), (t0, t1) = radii, thickness
    rmax = max(r0, r1)
    box = _pixel_box(np.minimum(a, b) - rmax, np.maximum(a, b) + rmax, out.shape, pixel_mm)
    if box is None:
        return
    where, xs, ys = box
    ax, ay, dx, dy = float(a[0]), float(a[1]), float(b[0] - a[0]), float(b[1] - a[1])
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) * (1.0 / (dx * dx + dy * dy)), 0, 1)
    dist = np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
    radius = r0 + (r1 - r0) * t
    chord = (t0 + (t1 - t0) * t) * np.sqrt(np.clip(1 - (dist / radius) ** 2, 0, None))
    np.maximum(out[where], activity * _effective_thickness(chord), out=out[where])
