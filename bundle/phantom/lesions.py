"""Lesions: each lesion's visible features are drawn first, then its probability of malignancy, then its label.

A patient has a tumour type and a hidden metastatic state; these only shape *which* lesion patterns appear
(metastases: many irregular, hot, axial lesions; degenerative disease: symmetric joint and vertebral-margin lesions;
fractures: small round rib spots in a line; Paget: a whole hot bone). The label never looks at them:
``p_malignant = sigmoid(logit(visible features) / difficulty)`` and ``label ~ Bernoulli(p_malignant)``, so
``roc_auc_score(label, p_malignant)`` is the best AUC any model that reads the image can reach.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bundle.phantom.anatomy import (
    RIB_ANTERIOR_X,
    RIB_LATERAL_X,
    SAMPLE_SPACING_MM,
    SIDES,
    VERTEBRAE,
    SkeletonTemplate,
)

TUMOR_TYPES = ("lung", "prostate", "breast", "other")
# lung / prostate / breast as the paper's Table 1 (1253 / 1017 / 1082 of 3352 patients), plus a small 'other' group
PATIENT_SHARE = (0.35, 0.28, 0.30, 0.07)
METASTATIC_RATE = {"lung": 0.46, "prostate": 0.48, "breast": 0.38, "other": 0.44}
MEAN_LESIONS_METASTATIC = {"lung": 6.0, "prostate": 6.8, "breast": 5.5, "other": 5.5}
MEAN_LESIONS_BENIGN = 2.8
SUPERSCAN_RATE = {"lung": 0.01, "prostate": 0.06, "breast": 0.03, "other": 0.01}  # share of metastatic patients
LYTIC_RATE = {"lung": 0.07, "prostate": 0.01, "breast": 0.10, "other": 0.06}  # share of metastases that are cold
MET_INTENSITY_MEDIAN = {"lung": 3.4, "prostate": 4.1, "breast": 3.1, "other": 3.2}

SITE_CATEGORIES = (
    "spine",
    "rib",
    "pelvis",
    "skull",
    "sternum",
    "scapula",
    "clavicle",
    "proximal_long_bone",
    "long_bone_shaft",
    "joint",
    "hand_foot",
)
AXIAL_SITES = frozenset({"spine", "rib", "pelvis", "skull", "sternum"})

# Patterns in a metastatic / a non-metastatic patient (the hidden state only picks the mixture).
PATTERNS_METASTATIC = {
    "metastasis": 0.80,
    "degenerative_joint": 0.08,
    "degenerative_spine": 0.06,
    "rib_fracture": 0.03,
    "benign_focal": 0.03,
}
PATTERNS_NON_METASTATIC = {
    "degenerative_joint": 0.32,
    "degenerative_spine": 0.22,
    "rib_fracture_line": 0.14,
    "rib_fracture": 0.12,
    "post_traumatic": 0.08,
    "benign_focal": 0.09,
    "paget": 0.03,
}
MET_SITES = {
    "lung": {"spine": 0.30, "rib": 0.28, "pelvis": 0.15, "proximal_long_bone": 0.10, "skull": 0.05,
             "sternum": 0.03, "scapula": 0.04, "clavicle": 0.02, "long_bone_shaft": 0.03},
    "prostate": {"spine": 0.35, "rib": 0.18, "pelvis": 0.26, "proximal_long_bone": 0.11, "skull": 0.04,
                 "sternum": 0.02, "scapula": 0.02, "clavicle": 0.01, "long_bone_shaft": 0.01},
    "breast": {"spine": 0.30, "rib": 0.22, "pelvis": 0.15, "proximal_long_bone": 0.10, "skull": 0.09,
               "sternum": 0.08, "scapula": 0.03, "clavicle": 0.02, "long_bone_shaft": 0.01},
    "other": {"spine": 0.30, "rib": 0.25, "pelvis": 0.17, "proximal_long_bone": 0.11, "skull": 0.06,
              "sternum": 0.03, "scapula": 0.03, "clavicle": 0.02, "long_bone_shaft": 0.03},
}  # fmt: skip

# logit(p_malignant) at difficulty 1 = sum of these terms (see docs/phantom.md).
LOGIT_COEFFICIENTS: dict[str, float | dict[str, float]] = {
    "intercept": -0.95,
    "site": {
        "spine": 0.77,
        "rib": 0.17,
        "pelvis": 0.77,
        "skull": 0.51,
        "sternum": 0.51,
        "scapula": 0.26,
        "clavicle": -0.26,
        "proximal_long_bone": 0.42,
        "long_bone_shaft": -0.51,
        "joint": -1.36,
        "hand_foot": -1.36,
    },
    "vertebral_margin": -1.02,
    "irregularity": 1.19,
    "elongated": 0.51,
    "log2_intensity": 1.02,
    "size_per_10mm": 0.68,
    "symmetric": -1.36,
    "rib_line": -1.87,
    "log2_lesions_in_image": 0.94,
    "neighbours_within_70mm": 0.17,
    "superscan": 2.12,
    "whole_bone": -4.25,
    "cold": 1.27,
}
# Reference values of the continuous terms: a lesion at these values gets no contribution from them.
INTENSITY_REFERENCE = 2.5
SIZE_REFERENCE_MM = 20.0
LESIONS_REFERENCE = 3.0
NEIGHBOUR_RADIUS_MM = 70.0
MIN_GAP_MM = 3.0  # between the outlines of two lesions
SYMMETRY_TOLERANCE_MM = 20.0
RIB_LINE_TOLERANCE_MM = 20.0


@dataclass(frozen=True)
class PatientProfile:
    """Patient-level draws: tumour type, hidden metastatic state, superscan, and the number of lesions to place."""

    tumor_type: str
    metastatic: bool
    superscan: bool
    lesion_target: int


@dataclass
class Lesion:
    """One lesion: where it sits (reference mm), what it looks like, the scene-level features, and its label.

    ``size_mm`` is the equivalent diameter of the footprint; ``aspect`` the elongation along ``axis``;
    ``intensity`` the peak uptake relative to normal bone at the site (< 1 for a cold defect).
    """

    pattern: str
    site: str
    site_detail: str
    side: str
    bone: str
    part: int
    centre: tuple[float, float]
    axis: float
    depth: float
    size_mm: float
    aspect: float
    irregularity: float
    intensity: float
    shape: str
    lobes: tuple[float, ...] = ()
    cold: bool = False
    whole_bone: tuple[str, ...] = ()
    vertebral_margin: bool = False
    symmetric: bool = False
    rib_line: bool = False
    neighbours: int = 0
    lesions_in_image: int = 0
    superscan: bool = False
    logit: float = 0.0
    p_malignant: float = 0.5
    label: int = 0

    @property
    def axial(self) -> bool:
        """On the axial skeleton (spine, ribs, pelvis, skull, sternum)."""
        return self.site in AXIAL_SITES

    @property
    def reach_mm(self) -> float:
        """Largest distance of the outline from the centre (elongation and irregular lobes included)."""
        return self.size_mm / 2 * math.sqrt(self.aspect) * (1 + 0.45 * self.irregularity)


def bone_site(name: str) -> str:
    """Site category of a template bone name."""
    if name in _VERTEBRA_NAMES:
        return "spine"
    prefix = name.rsplit("_", 1)[0] if name[-2:] in ("_R", "_L") else name
    if name.startswith("rib_"):
        return "rib"
    table = {
        "sacrum": "pelvis",
        "coccyx": "pelvis",
        "si_joint": "pelvis",
        "iliac": "pelvis",
        "pubis": "pelvis",
        "ischium": "pelvis",
        "skull": "skull",
        "face": "skull",
        "mandible": "skull",
        "sternum": "sternum",
        "scapula": "scapula",
        "clavicle": "clavicle",
        "humerus_head": "proximal_long_bone",
        "humerus_upper": "proximal_long_bone",
        "femur_neck": "proximal_long_bone",
        "trochanter": "proximal_long_bone",
        "femur_upper": "proximal_long_bone",
        "humerus_lower": "long_bone_shaft",
        "femur_lower": "long_bone_shaft",
        "tibia": "long_bone_shaft",
        "fibula": "long_bone_shaft",
        "radius": "long_bone_shaft",
        "ulna": "long_bone_shaft",
        "hand": "hand_foot",
        "foot": "hand_foot",
    }
    return table.get(prefix, "joint")  # acromion, glenoid, sternoclavicular, elbow, wrist, knee, patella, ...


_VERTEBRA_NAMES = {v[0] for v in VERTEBRAE}
_VERTEBRA = {v[0]: v for v in VERTEBRAE}


def mirror_bone(name: str) -> str:
    """The same bone on the other side (midline bones are their own mirror)."""
    if name.endswith("_R"):
        return name[:-2] + "_L"
    if name.endswith("_L"):
        return name[:-2] + "_R"
    if name.startswith("rib_"):
        return "rib_" + {"R": "L", "L": "R"}[name[4]] + name[5:]
    return name


def bone_side(name: str) -> str:
    """``R``, ``L`` or ``mid`` from a template bone name."""
    if name.startswith("rib_"):
        return name[4]
    return name[-1] if name[-2:] in ("_R", "_L") else "mid"


@lru_cache(maxsize=4)
def _bones_by_site(bone_names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Template bones that lesions may sit on, by site category (organs, face, mandible and coccyx excluded)."""
    sites: dict[str, list[str]] = {s: [] for s in SITE_CATEGORIES}
    for name in bone_names:
        if name.startswith(("kidney", "bladder", "face", "mandible", "coccyx")):
            continue
        sites[bone_site(name)].append(name)
    return {k: tuple(v) for k, v in sites.items()}


# ----------------------------------------------------------------------------------------------------------------
# Patient profile
# ----------------------------------------------------------------------------------------------------------------


def sample_patient_profile(rng: np.random.Generator) -> PatientProfile:
    """Tumour type, hidden metastatic state, superscan, and how many lesions the scan will show."""
    tumor_type = TUMOR_TYPES[int(rng.choice(len(TUMOR_TYPES), p=PATIENT_SHARE))]
    metastatic = bool(rng.random() < METASTATIC_RATE[tumor_type])
    superscan = metastatic and bool(rng.random() < SUPERSCAN_RATE[tumor_type])
    if metastatic:
        extra = _negative_binomial(rng, MEAN_LESIONS_METASTATIC[tumor_type] - 1, dispersion=1.6)
        target = 1 + min(extra, 24) + (6 if superscan else 0)
    else:
        target = 1 + min(_negative_binomial(rng, MEAN_LESIONS_BENIGN - 1, dispersion=2.5), 10)
    return PatientProfile(tumor_type, metastatic, superscan, int(target))


def _negative_binomial(rng: np.random.Generator, mean: float, dispersion: float) -> int:
    """Over-dispersed count with the given mean (variance = mean + mean**2 / dispersion)."""
    return int(rng.negative_binomial(dispersion, dispersion / (dispersion + mean)))


# ----------------------------------------------------------------------------------------------------------------
# Lesion patterns (each returns one or more lesions, in reference mm)
# ----------------------------------------------------------------------------------------------------------------


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float) -> float:
    """Log-normal draw with the given median and log-SD, clipped to [lo, hi]."""
    return float(np.clip(median * math.exp(sigma * rng.standard_normal()), lo, hi))


def _pick(rng: np.random.Generator, table: dict[str, float]) -> str:
    """A key of ``table`` drawn with probability proportional to its value."""
    keys = list(table)
    p = np.array([table[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _shape(rng: np.random.Generator, p_round: float, p_elongated: float) -> tuple[str, float, float]:
    """(shape, irregularity, aspect) with the remaining probability going to 'irregular'."""
    u = rng.random()
    if u < p_round:
        return "round", float(rng.uniform(0.0, 0.2)), float(rng.uniform(1.0, 1.25))
    if u < p_round + p_elongated:
        return "elongated", float(rng.uniform(0.1, 0.4)), float(rng.uniform(1.8, 2.8))
    return "irregular", float(rng.uniform(0.5, 1.0)), float(rng.uniform(1.0, 1.6))


def _lobes(rng: np.random.Generator) -> tuple[float, ...]:
    """Amplitudes and phases of the boundary harmonics 2, 3 and 5 of an irregular outline."""
    amps = rng.dirichlet((2.0, 1.5, 1.0)) * 0.45
    phases = rng.uniform(0, 2 * math.pi, 3)
    return tuple(float(v) for v in np.concatenate([amps, phases]))


class _Scene:
    """Places lesions on the reference skeleton without overlaps."""

    def __init__(self, rng: np.random.Generator, template: SkeletonTemplate, profile: PatientProfile) -> None:
        self.rng = rng
        self.template = template
        self.profile = profile
        self.sites = _bones_by_site(template.bone_names)
        self.lesions: list[Lesion] = []
        self.blocked_points = np.zeros((0, 2), np.float32)  # points of whole-bone (Paget) lesions

    # -- anchoring on the template ------------------------------------------------------------------------------
    def _anchor(self, point_index: int) -> dict:
        """Where a lesion sits if centred on template point ``point_index``: bone, part, centre, axis, depth, site."""
        t = self.template
        bone = t.bone_names[int(t.bone[point_index])]
        return {
            "bone": bone,
            "part": int(t.part[point_index]),
            "centre": (float(t.points[point_index, 0]), float(t.points[point_index, 1])),
            "axis": float(t.axis[point_index]),
            "depth": float(t.depth[point_index]),
            "side": bone_side(bone),
            "site": bone_site(bone),
        }

    def random_point(self, bones: Sequence[str]) -> dict:
        """Anchor on a random point of the given bones (larger bones are hit more often)."""
        idx = self.template.points_of(bones)
        return self._anchor(int(idx[self.rng.integers(len(idx))]))

    def nearest_point(self, bone: str, xy: Sequence[float]) -> dict:
        """Anchor on the point of ``bone`` nearest to ``xy`` (reference mm)."""
        idx = self.template.points_of([bone])
        d = np.hypot(self.template.points[idx, 0] - xy[0], self.template.points[idx, 1] - xy[1])
        return self._anchor(int(idx[np.argmin(d)]))

    def vertebra_anchor(self, name: str, margin_side: float = 0.0) -> dict:
        """Centre of the vertebral body, or its lateral margin on side ``margin_side`` (-1/+1)."""
        _, y, w, h = _VERTEBRA[name]
        if margin_side:
            xy = (margin_side * (w / 2 - 1), y + self.rng.uniform(-0.35, 0.35) * h)
        else:
            xy = (self.rng.uniform(-0.15, 0.15) * w, y + self.rng.uniform(-0.15, 0.15) * h)
        a = self.nearest_point(name, xy)
        a.update(centre=(float(xy[0]), float(xy[1])), axis=math.pi / 2, side="mid")
        if margin_side:
            a["side"] = "L" if margin_side > 0 else "R"
        return a

    def fits(self, group: Sequence[Lesion]) -> bool:
        """True if the new lesions keep ``MIN_GAP_MM`` from each other, the placed lesions and whole-bone lesions."""
        for i, new in enumerate(group):
            others = list(self.lesions) + list(group[:i])
            for old in others:
                if new.whole_bone or old.whole_bone:
                    continue
                if math.dist(new.centre, old.centre) - new.reach_mm - old.reach_mm < MIN_GAP_MM:
                    return False
            if not new.whole_bone and len(self.blocked_points):
                d = np.hypot(*(self.blocked_points - np.asarray(new.centre, np.float32)).T)
                if d.min() < new.reach_mm + MIN_GAP_MM:
                    return False
            if new.whole_bone:
                pts = self.template.points[self.template.points_of(new.whole_bone)]
                for old in others:
                    if np.hypot(*(pts - np.asarray(old.centre, np.float32)).T).min() < old.reach_mm + MIN_GAP_MM:
                        return False
        return True

    def add(self, group: Sequence[Lesion]) -> bool:
        """Place the group if it fits; returns whether it was placed."""
        if not group or not self.fits(group):
            return False
        self.lesions.extend(group)
        for lesion in group:
            if lesion.whole_bone:
                pts = self.template.points[self.template.points_of(lesion.whole_bone)]
                self.blocked_points = np.vstack([self.blocked_points, pts])
        return True

    def lesion(self, pattern: str, anchor: dict, **kw) -> Lesion:
        """A :class:`Lesion` at ``anchor`` with the given features (``kw``) and random outline harmonics."""
        detail = kw.pop("site_detail", anchor.get("site_detail", anchor["bone"]))
        return Lesion(
            pattern=pattern,
            site=anchor["site"],
            site_detail=detail,
            side=anchor["side"],
            bone=anchor["bone"],
            part=anchor["part"],
            centre=anchor["centre"],
            axis=anchor["axis"],
            depth=anchor["depth"],
            lobes=_lobes(self.rng),
            **kw,
        )

    # -- patterns -----------------------------------------------------------------------------------------------
    def metastasis(self, cold: bool = False) -> list[Lesion]:
        """A metastasis: axial-predominant, often irregular or elongated, hot (or a cold lytic defect)."""
        rng, tumor = self.rng, self.profile.tumor_type
        site = _pick(rng, MET_SITES[tumor])
        margin = False
        if site == "spine":
            weights = {v[0]: (0.35 if v[0][0] == "C" else 1.0 if v[0][0] == "T" else 1.25) for v in VERTEBRAE[2:]}
            margin = rng.random() < 0.12
            anchor = self.vertebra_anchor(_pick(rng, weights), margin_side=float(rng.choice([-1, 1])) if margin else 0)
        elif site == "rib":
            anchor = self._rib_anchor(
                int(rng.integers(1, 13)), str(rng.choice(["R", "L"])), float(rng.uniform(0.03, 0.97))
            )
        else:
            anchor = self.random_point(self.sites[site])
        size = _lognormal(rng, 27.0 if tumor == "prostate" else 24.0, 0.28, 14.0, 46.0)
        if site == "spine" and not margin:
            size = max(size, 0.9 * _VERTEBRA[anchor["bone"]][2])
        if cold:
            shape, irregularity, aspect = _shape(rng, 0.45, 0.1)
            intensity = float(rng.uniform(0.2, 0.5))
            size = float(np.clip(size, 16.0, 36.0))
        elif site == "rib":
            shape, irregularity, aspect = _shape(rng, 0.2, 0.45)
            intensity = _lognormal(rng, MET_INTENSITY_MEDIAN[tumor], 0.3, 1.8, 9.0)
        else:
            shape, irregularity, aspect = _shape(rng, 0.3, 0.15)
            intensity = _lognormal(rng, MET_INTENSITY_MEDIAN[tumor], 0.3, 1.8, 9.0)
        pattern = "lytic_metastasis" if cold else "metastasis"
        return [
            self.lesion(
                pattern,
                anchor,
                size_mm=size,
                aspect=aspect,
                irregularity=irregularity,
                intensity=intensity,
                shape=shape,
                cold=cold,
                vertebral_margin=margin,
            )
        ]

    def _rib_anchor(self, k: int, side: str, u: float) -> dict:
        """Anchor on rib ``k`` of ``side`` at fraction ``u`` of its length (0 = at the spine)."""
        curve = self.template.rib_curves[(side, k)]
        xy = curve[min(int(u * len(curve)), len(curve) - 1)]
        a = self.nearest_point(f"rib_{side}{k:02d}", xy)
        a["site_detail"] = f"rib_{side}{k:02d}"
        return a

    def degenerative_joint(self) -> list[Lesion]:
        """Degenerative change at a joint, often with the same joint of the other side."""
        rng = self.rng
        joint = _pick(
            rng,
            {"knee": 0.33, "shoulder": 0.25, "hip": 0.10, "ankle": 0.10, "elbow": 0.05, "wrist": 0.05, "hand": 0.06,
             "foot": 0.06},
        )  # fmt: skip
        side = str(rng.choice(["R", "L"]))
        bones = {
            "knee": ["knee", "patella"],
            "shoulder": ["glenoid", "acromion"],
            "hip": ["acetabulum", "femur_head"],
        }.get(joint, [joint])
        anchor = self.random_point([f"{b}_{side}" for b in bones])
        size = _lognormal(rng, 17.0, 0.22, 11.0, 28.0)
        shape, irregularity, aspect = _shape(rng, 0.6, 0.1)
        intensity = _lognormal(rng, 2.3, 0.25, 1.5, 4.5)
        kw = dict(size_mm=size, aspect=aspect, irregularity=irregularity, intensity=intensity, shape=shape)
        group = [self.lesion("degenerative_joint", anchor, site_detail=f"{joint}_{side}", **kw)]
        if rng.random() < 0.6:  # the same joint on the other side
            partner = self.nearest_point(mirror_bone(anchor["bone"]), (-anchor["centre"][0], anchor["centre"][1]))
            kw.update(size_mm=size * rng.uniform(0.8, 1.2), intensity=max(1.5, intensity * rng.uniform(0.85, 1.15)))
            group.append(self.lesion("degenerative_joint", partner, site_detail=f"{joint}_{partner['side']}", **kw))
        return group

    def degenerative_spine(self) -> list[Lesion]:
        """Degenerative change at the lateral margin of a vertebra (osteophyte/facet), sometimes on both margins."""
        rng = self.rng
        region = _pick(rng, {"lumbar": 0.65, "cervical": 0.2, "thoracic": 0.15})
        level = {
            "lumbar": ["L2", "L3", "L4", "L5"],
            "cervical": ["C4", "C5", "C6", "C7"],
            "thoracic": ["T9", "T10", "T11", "T12"],
        }[region][int(rng.integers(4))]
        side = float(rng.choice([-1, 1]))
        size = _lognormal(rng, 15.0, 0.2, 10.0, 22.0)
        shape, irregularity, aspect = _shape(rng, 0.7, 0.3)
        intensity = _lognormal(rng, 2.2, 0.25, 1.5, 4.0)
        kw = dict(aspect=aspect, irregularity=irregularity, shape=shape, vertebral_margin=True)
        group = [
            self.lesion(
                "degenerative_spine", self.vertebra_anchor(level, side), size_mm=size, intensity=intensity, **kw
            )
        ]
        if rng.random() < 0.35:  # both margins of the same level
            other = self.vertebra_anchor(level, -side)
            other["centre"] = (-group[0].centre[0], group[0].centre[1])
            group.append(
                self.lesion(
                    "degenerative_spine",
                    other,
                    size_mm=size * rng.uniform(0.85, 1.15),
                    intensity=max(1.5, intensity * rng.uniform(0.85, 1.15)),
                    **kw,
                )
            )
        return group

    def rib_fracture_line(self) -> list[Lesion]:
        """Two to four small round foci on consecutive ribs, vertically aligned (a fall on the side)."""
        rng = self.rng
        count = int(rng.choice([2, 3, 4], p=[0.45, 0.35, 0.2]))
        first = int(rng.integers(3, 11 - count + 1))
        side = str(rng.choice(["R", "L"]))
        s = SIDES[side]
        anterior = rng.random() < 0.3
        ribs = range(first, first + count)
        reach = min(RIB_LATERAL_X[k - 1] for k in ribs)
        x_target = s * reach * rng.uniform(0.7, 0.95)
        if anterior:
            lo = max(RIB_ANTERIOR_X[k - 1] for k in ribs) + 10
            x_target = s * rng.uniform(lo, max(lo + 1, reach * 0.8))
        intensity = _lognormal(rng, 2.8, 0.25, 1.8, 5.5)
        group = []
        for k in ribs:
            curve = self.template.rib_curves[(side, k)]
            half = curve[24:] if anterior and len(curve) > 24 else curve[:24]
            xy = half[int(np.argmin(np.abs(half[:, 0] - x_target)))]
            anchor = self.nearest_point(f"rib_{side}{k:02d}", xy)
            group.append(
                self.lesion(
                    "rib_fracture_line",
                    anchor,
                    size_mm=float(rng.uniform(11.0, 17.0)),
                    aspect=float(rng.uniform(1.0, 1.2)),
                    irregularity=float(rng.uniform(0.0, 0.15)),
                    intensity=max(1.5, intensity * rng.uniform(0.85, 1.15)),
                    shape="round",
                )
            )
        return group

    def rib_fracture(self) -> list[Lesion]:
        """One small round, fairly hot rib focus (a single fracture)."""
        rng = self.rng
        anchor = self._rib_anchor(int(rng.integers(3, 12)), str(rng.choice(["R", "L"])), float(rng.uniform(0.05, 0.95)))
        return [
            self.lesion(
                "rib_fracture",
                anchor,
                size_mm=float(rng.uniform(11.0, 18.0)),
                aspect=float(rng.uniform(1.0, 1.3)),
                irregularity=float(rng.uniform(0.0, 0.2)),
                intensity=_lognormal(rng, 2.7, 0.25, 1.7, 5.0),
                shape="round",
            )
        ]

    def post_traumatic(self) -> list[Lesion]:
        """A post-traumatic or surgical focus on a limb bone, hand/foot or clavicle."""
        rng = self.rng
        site = _pick(rng, {"long_bone_shaft": 0.4, "hand_foot": 0.35, "clavicle": 0.15, "proximal_long_bone": 0.1})
        anchor = self.random_point(self.sites[site])
        shape, irregularity, aspect = _shape(rng, 0.6, 0.4)
        return [
            self.lesion(
                "post_traumatic",
                anchor,
                size_mm=_lognormal(rng, 15.0, 0.2, 10.0, 24.0),
                aspect=aspect,
                irregularity=irregularity,
                intensity=_lognormal(rng, 2.4, 0.3, 1.5, 5.0),
                shape=shape,
            )
        ]

    def benign_focal(self) -> list[Lesion]:
        """A small, mild, round axial focus (bone island, healed fracture, haemangioma): a metastasis mimic."""
        rng = self.rng
        site = _pick(rng, {"spine": 0.35, "pelvis": 0.3, "rib": 0.2, "skull": 0.1, "sternum": 0.05})
        if site == "spine":
            anchor = self.vertebra_anchor(VERTEBRAE[int(rng.integers(7, len(VERTEBRAE)))][0])
        else:
            anchor = self.random_point(self.sites[site])
        return [
            self.lesion(
                "benign_focal",
                anchor,
                size_mm=_lognormal(rng, 15.0, 0.2, 10.0, 24.0),
                aspect=float(rng.uniform(1.0, 1.3)),
                irregularity=float(rng.uniform(0.0, 0.25)),
                intensity=_lognormal(rng, 2.2, 0.25, 1.5, 4.0),
                shape="round",
            )
        ]

    def paget(self) -> list[Lesion]:
        """Paget's disease: a whole bone intensely and uniformly hot."""
        rng = self.rng
        side = str(rng.choice(["R", "L"]))
        groups = {
            "hemipelvis": [f"iliac_{side}"],
            "femur": [f"femur_head_{side}", f"femur_neck_{side}", f"trochanter_{side}", f"femur_upper_{side}",
                      f"femur_lower_{side}"],
            "tibia": [f"tibia_{side}"],
            "humerus": [f"humerus_head_{side}", f"humerus_upper_{side}", f"humerus_lower_{side}"],
            "vertebra": [f"L{int(rng.integers(1, 6))}"],
            "skull": ["skull"],
        }  # fmt: skip
        name = _pick(
            rng, {"hemipelvis": 0.3, "femur": 0.2, "tibia": 0.15, "humerus": 0.1, "vertebra": 0.15, "skull": 0.1}
        )
        bones = tuple(groups[name])
        idx = self.template.points_of(bones)
        pts = self.template.points[idx]
        anchor = self._anchor(int(idx[np.argmin(np.hypot(*(pts - pts.mean(0)).T))]))
        anchor["centre"] = (float(pts[:, 0].mean()), float(pts[:, 1].mean()))
        area = len(idx) * SAMPLE_SPACING_MM**2
        return [
            self.lesion(
                "paget",
                anchor,
                site_detail=f"{name}_{side}" if name not in ("vertebra", "skull") else bones[0],
                size_mm=float(2 * math.sqrt(area / math.pi)),
                aspect=1.0,
                irregularity=0.0,
                intensity=float(rng.uniform(2.0, 3.0)),
                shape="whole_bone",
                whole_bone=bones,
            )
        ]


def sample_lesions(rng: np.random.Generator, profile: PatientProfile, template: SkeletonTemplate) -> list[Lesion]:
    """Place about ``profile.lesion_target`` lesions (pairs and rib lines may add a few) and describe the scene.

    Returns the lesions with their visible scene features filled in (``symmetric``, ``rib_line``, ``neighbours``,
    ``lesions_in_image``, ``superscan``); probabilities and labels are set by :func:`assign_labels`.
    """
    scene = _Scene(rng, template, profile)
    if profile.metastatic:
        patterns = {"metastasis": 1.0} if profile.superscan else PATTERNS_METASTATIC
    else:
        patterns = PATTERNS_NON_METASTATIC
    attempts = 0
    while len(scene.lesions) < profile.lesion_target and attempts < 60:
        attempts += 1
        pattern = _pick(rng, patterns)
        if pattern == "paget" and any(les.whole_bone for les in scene.lesions):
            continue
        if pattern == "metastasis":
            group = scene.metastasis(cold=bool(rng.random() < LYTIC_RATE[profile.tumor_type]))
        else:
            group = getattr(scene, pattern)()
        scene.add(group)
    describe_scene(scene.lesions, profile.superscan)
    return scene.lesions


def describe_scene(lesions: Sequence[Lesion], superscan: bool) -> None:
    """Fill in the scene-level visible features of every lesion (in place)."""
    n = len(lesions)
    centres = np.array([les.centre for les in lesions], float).reshape(n, 2)
    for i, les in enumerate(lesions):
        les.lesions_in_image = n
        les.superscan = superscan
        d = np.hypot(*(centres - centres[i]).T)
        les.neighbours = int(np.sum(d < NEIGHBOUR_RADIUS_MM) - 1)
        mirrored = np.array([-les.centre[0], les.centre[1]])
        les.symmetric = abs(les.centre[0]) > 12 and any(
            j != i
            and other.site == les.site
            and mirror_bone(les.bone) == other.bone
            and float(np.hypot(*(centres[j] - mirrored))) < SYMMETRY_TOLERANCE_MM
            for j, other in enumerate(lesions)
        )
        les.rib_line = les.site == "rib" and any(
            j != i
            and other.site == "rib"
            and other.bone[4] == les.bone[4]
            and abs(int(other.bone[5:]) - int(les.bone[5:])) == 1
            and abs(centres[j, 0] - centres[i, 0]) < RIB_LINE_TOLERANCE_MM
            for j, other in enumerate(lesions)
        )


def malignancy_logit(lesion: Lesion) -> float:
    """logit(p_malignant) at difficulty 1 from the lesion's visible features (:data:`LOGIT_COEFFICIENTS`)."""
    c = LOGIT_COEFFICIENTS
    z = float(c["intercept"]) + float(c["site"][lesion.site])  # type: ignore[index]
    z += float(c["vertebral_margin"]) * lesion.vertebral_margin
    z += float(c["irregularity"]) * lesion.irregularity
    z += float(c["elongated"]) * (lesion.shape == "elongated")
    if lesion.cold:
        z += float(c["cold"])
    else:
        z += float(c["log2_intensity"]) * math.log2(lesion.intensity / INTENSITY_REFERENCE)
    z += float(c["size_per_10mm"]) * (min(max(lesion.size_mm, 10.0), 50.0) - SIZE_REFERENCE_MM) / 10.0
    z += float(c["symmetric"]) * lesion.symmetric
    z += float(c["rib_line"]) * lesion.rib_line
    z += float(c["log2_lesions_in_image"]) * math.log2(lesion.lesions_in_image / LESIONS_REFERENCE)
    z += float(c["neighbours_within_70mm"]) * min(lesion.neighbours, 4)
    z += float(c["superscan"]) * lesion.superscan
    z += float(c["whole_bone"]) * bool(lesion.whole_bone)
    return z


def assign_labels(rng: np.random.Generator, lesions: Sequence[Lesion], difficulty: float) -> None:
    """Set ``logit``, ``p_malignant = sigmoid(logit / difficulty)`` and ``label ~ Bernoulli(p)`` (in place)."""
    if difficulty <= 0:
        raise ValueError(f"difficulty must be > 0, got {difficulty}")
    for les in lesions:
        les.logit = malignancy_logit(les)
        les.p_malignant = float(1.0 / (1.0 + math.exp(-les.logit / difficulty)))
        les.label = int(rng.random() < les.p_malignant)


def sample_new_metastases(
    rng: np.random.Generator,
    profile: PatientProfile,
    template: SkeletonTemplate,
    existing: Sequence[Lesion],
    count: int,
    max_attempts: int = 40,
) -> list[Lesion]:
    """Place up to ``count`` new metastases of the patient's tumour type clear of the ``existing`` lesions.

    The new lesions have the usual metastasis features (site mix, size, shape, intensity, lytic share); the scene
    features and labels are left to :func:`describe_scene` and :func:`assign_labels`. A lesion that does not fit
    after ``max_attempts`` tries in all is dropped, so fewer than ``count`` may come back.
    """
    scene = _Scene(rng, template, profile)
    scene.lesions = list(existing)
    for lesion in existing:
        if lesion.whole_bone:
            pts = template.points[template.points_of(lesion.whole_bone)]
            scene.blocked_points = np.vstack([scene.blocked_points, pts])
    new: list[Lesion] = []
    attempts = 0
    while len(new) < count and attempts < max_attempts:
        attempts += 1
        group = scene.metastasis(cold=bool(rng.random() < LYTIC_RATE[profile.tumor_type]))
        if scene.add(group):
            new.extend(group)
    return new
