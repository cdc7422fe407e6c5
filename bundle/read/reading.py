"""The full read of whole-body scans with no outlines: regions → hot spots → the classifier on each → BSI, report.

``configs/read.yaml`` builds a :class:`WholeScanReader` from train.yaml's own preprocessing and network (read by
path, as inference.yaml does) and runs it over a folder of scans::

    python -m monai.bundle run reading --config_file configs/read.yaml --dataset_dir DIR --output_dir OUT \\
        [--checkpoint models/model.pt] [--regions_checkpoint ...]

Per scan (``OUT/<scan>/``): ``read.json`` (everything below), ``hotspots.csv`` (one row per hot spot: id, views,
centre, area in pixels and mm², region, peak/mean ratio to normal bone, P(malignant), class), ``hotspots.nii.gz``
(label image, hot spot ``k`` = value ``k`` in both halves), ``regions.nii.gz`` (region map) and ``read.png``
(numbered hot-spot outlines coloured by class over the scan, the region map faintly underneath). For the run:
``OUT/reads.csv`` (one row per scan), ``OUT/hotspots.csv`` (all hot spots), ``OUT/failed.csv`` and
``OUT/read.json``. Every file is written to a temporary name and renamed into place; a scan's folder appears
complete or not at all. A scan that fails is logged and listed in ``failed.csv``; the others are still read, and
the run ends with exit status 1.

Rules (stated in every ``read.json``): a hot spot is **malignant** when P(malignant) ≥ ``threshold``; the
**patient-level probability** is the highest P(malignant) of the scan's hot spots (0 with none), and the scan is
called positive when it reaches ``threshold``; the **BSI** counts the area of the malignant hot spots
(thresholded, not probability-weighted) over the bone regions' areas, weighted by skeletal mass
(:func:`bundle.data.regions.bone_scan_index`), over the views present: a single-view scan is read in its one view
and its BSI marked ``bsi_views: 1``.

Data-parallel over processes (``torchrun``, configs/read_multi_gpu.yaml): process ``r`` of ``n`` reads scans
``r, r + n, ...``; after a barrier the first process merges every scan's ``read.json`` into the run's files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.handlers import Checkpoint
from monai.data import list_data_collate
from monai.engines import default_prepare_batch

from bundle.data.builder import SCAN_FOLDERS, scans_in
from bundle.data.lesion_groups import items_for_mode
from bundle.data.paths import EXTENSIONS, resolve, stem
from bundle.data.readers import save_layout_nifti
from bundle.data.regions import (
    BONE_VALUES,
    REGION_BY_VALUE,
    bone_mask,
    bone_scan_index,
    check_region_map,
)
from bundle.io import atomic_directory, atomic_save_figure, atomic_write_csv, atomic_write_text
from bundle.read.hotspots import HotSpotDetector, HotSpots, hotspots_from_masks, pixel_size_mm

logger = logging.getLogger(__name__)

HOTSPOT_COLUMNS = (
    "scan", "hotspot_id", "views", "centre_row", "centre_col", "area_px", "area_mm2", "region", "peak_ratio",
    "mean_ratio", "p_malignant", "predicted_class",
)  # fmt: skip
READ_COLUMNS = (
    "scan", "patient_probability", "patient_call", "hotspots", "malignant_hotspots", "bsi", "bsi_views", "views",
    "regions_source", "output",
)  # fmt: skip
MIN_ROWS = 128  # a whole-body view has at least this many rows (gamma cameras: 512-2048)
MIN_ASPECT = 2.0  # and is at least twice as tall as one view is wide


class ScanError(ValueError):
    """A file that cannot be read as a whole-body bone scan (names the file and the problem)."""


def scan_paths(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None) -> list[str]:
    """The scans to read: a datalist's ``scans`` (else the distinct ``image`` of its ``training`` entries), or the
    scans of ``dataset_dir/images`` (or ``scans/``, or ``dataset_dir`` itself), sorted.

    Raises:
        FileNotFoundError: ``dataset_dir`` or the datalist does not exist. ValueError: no scans found.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root.resolve()}: no such folder; give the scans with --dataset_dir")
    if datalist:
        path = Path(datalist)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the datalist ({err})") from None
        entries = (content.get("scans") or content.get("training") or []) if isinstance(content, dict) else []
        images = list(dict.fromkeys(e["image"] for e in entries if isinstance(e, Mapping) and e.get("image")))
        if not images:
            raise ValueError(f"{path}: no scans (a 'scans' or 'training' list with 'image' paths)")
        return [resolve(i, root) if isinstance(i, str) else [resolve(p, root) for p in i] for i in images]
    folder = next((root / name for name in SCAN_FOLDERS if (root / name).is_dir()), root)
    found = sorted(
        str(p)
        for p in scans_in(folder).values()
        if (p.is_file() and p.name.lower().endswith(EXTENSIONS)) or (p.is_dir() and any(p.glob("*.dcm")))
    )
    if not found:
        raise ValueError(f"{folder}: no scans found (NIfTI, PNG, TIFF or DICOM files)")
    return found


def scan_name(scan: str | Sequence[str]) -> str:
    """Output folder name of a scan: its file name without extensions (the first file's, for two views)."""
    first = scan if isinstance(scan, str) else scan[0]
    return stem(Path(os.fspath(first).rstrip("/")).name) if os.path.isfile(first) else Path(first).name


def check_scan(array: np.ndarray, source: str) -> None:
    """Refuse what is not a whole-body bone scan: not 2-D, too small or too wide for a whole-body view, no counts.

    Raises:
        ScanError: naming ``source`` and the problem.
    """
    if array.ndim != 2:
        raise ScanError(f"{source}: not a 2-D scan (shape {array.shape})")
    rows, cols = array.shape
    if rows < MIN_ROWS or cols % 2 or rows < MIN_ASPECT * (cols // 2):
        raise ScanError(
            f"{source}: {rows} x {cols} is not a whole-body scan (anterior | posterior views side by side, each at "
            f"least {MIN_ROWS} rows and {MIN_ASPECT:g} times as tall as wide)"
        )
    if not np.isfinite(array).all() or float(array.max(initial=0)) <= 0:
        raise ScanError(f"{source}: the scan holds no counts")


@dataclass
class ScanRead:
    """One scan read in memory (:meth:`WholeScanReader.analyse`).

    Attributes:
        array: counts (H, W) float32, stored layout. meta: the reader's metadata. regions: region map (H, W).
        hotspots: the lesions read (detected hot spots or the outlined lesions). probabilities: P(malignant) per
        lesion, in ``hotspots.records`` order. result: the ``read.json`` content. masks: one bool (H, W) mask per
        lesion, in the same order (outlined lesions as read, so overlapping ones stay whole).
    """

    array: np.ndarray
    meta: dict
    regions: np.ndarray
    hotspots: HotSpots
    probabilities: list[float]
    result: dict[str, Any]
    masks: list[np.ndarray]


class WholeScanReader:
    """Reads whole scans: region map, hot spots, the classifier on each hot spot, BSI and the outputs.

    Args:
        segmenter: ``segmenter(scan (H, W) float32) -> region map (H, W) int``: atlas (default) or network.
        detector: the hot-spot detector.
        preprocessing: the classifier's scan + mask preprocessing (train.yaml ``image_transforms``, e.g. wrapped in
            :class:`~bundle.engine.inference.ScanCachedCompose`) of one item of ``lesion_mode``: ``{"image": path,
            "mask": path} -> {"image": tensor (2, h, w)}`` in the paper's mode.
        network: the classifier (weights loaded), in eval mode on ``device``.
        inferer: ``inferer(inputs, network, *args, **kwargs) -> logits (N, 2)``.
        postprocessing: train.yaml's ``postprocessing`` (softmax into ``pred``).
        image_reader: reads scans (:class:`~bundle.data.readers.WholeBodyScanReader`).
        output_dir: where the results go.
        threshold: P(malignant) from which a hot spot is malignant (and a scan positive).
        batch_size: hot spots per forward pass.
        device: where the network runs.
        regions_source: how the regions were made (written into the outputs).
        metadata: extra fields for the run's read.json (model, checkpoint, versions).
        pixel_mm: (row, column) pixel size for files without one; default from the whole-body field of view.
        lesion_mode: train.yaml's: ``lesion`` (one item per hot spot) or ``scan`` (one item per scan).
        context_masks: train.yaml's (per-lesion items then list the scan's other hot spots).
        collate_fn: train.yaml's ``collate_fn`` (batches of preprocessed items).
        prepare_batch: train.yaml's ``prepare_batch`` (a batch -> the network's inputs).
    """

    def __init__(
        self,
        segmenter: Callable[[np.ndarray], np.ndarray],
        detector: HotSpotDetector,
        preprocessing: Callable[[dict], dict],
        network: torch.nn.Module,
        inferer: Callable,
        postprocessing: Callable[[dict], dict],
        image_reader: Any,
        output_dir: str | os.PathLike,
        threshold: float = 0.5,
        batch_size: int = 8,
        device: torch.device | str = "cpu",
        regions_source: str = "atlas",
        metadata: Mapping[str, Any] | None = None,
        pixel_mm: Sequence[float] | None = None,
        lesion_mode: str = "lesion",
        context_masks: bool = False,
        collate_fn: Callable[[Sequence[Any]], Any] = list_data_collate,
        prepare_batch: Callable = default_prepare_batch,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        self.segmenter, self.detector = segmenter, detector
        self.preprocessing, self.network, self.inferer = preprocessing, network, inferer
        self.postprocessing, self.image_reader = postprocessing, image_reader
        self.output_dir = Path(output_dir)
        self.threshold, self.batch_size, self.device = threshold, batch_size, torch.device(device)
        self.regions_source = regions_source
        self.metadata = dict(metadata or {})
        self.pixel_mm = tuple(pixel_mm) if pixel_mm else None
        self.lesion_mode, self.context_masks = lesion_mode, bool(context_masks)
        self.collate_fn, self.prepare_batch = collate_fn, prepare_batch

    # ---- one scan -----------------------------------------------------------------------------------------------
    def load(self, scan: str | Sequence[str]) -> tuple[np.ndarray, dict]:
        """(counts (H, W) float32, metadata) of a scan, checked to be a whole-body scan."""
        source = scan if isinstance(scan, str) else " + ".join(scan)
        image = self.image_reader.read(scan)
        array, meta = self.image_reader.get_data(image)
        array = np.asarray(array, np.float32)
        check_scan(array, source)
        return array, meta

    def classify(self, scan: str | Sequence[str], masks: Sequence[str]) -> list[float]:
        """P(malignant) of each lesion, the classifier run exactly as in training/inference on scan + mask.

        ``masks``: one mask reference per lesion, as a datalist gives it (``labels.nii.gz#3``, ``seg.dcm#2``).
        """
        probabilities: list[float] = []
        self.network.eval()
        entries = [{"image": scan, "mask": m, "lesion_id": str(i)} for i, m in enumerate(masks)]
        items = items_for_mode(entries, self.lesion_mode, self.context_masks)  # per lesion, or the scan
        for start in range(0, len(items), self.batch_size):
            batch = self.collate_fn([self.preprocessing(item) for item in items[start : start + self.batch_size]])
            inputs, _, args, kwargs = (*self.prepare_batch(batch, self.device), (), {})[:4]
            with torch.no_grad():
                logits = self.inferer(inputs, self.network, *args, **kwargs)
            for row in logits:
                pred = self.postprocessing({"pred": row.float().cpu()})["pred"]
                probabilities.append(float(pred[1]))
        return probabilities

    def analyse(
        self,
        scan: str | Sequence[str],
        workdir: str | os.PathLike,
        loaded: tuple[np.ndarray, dict] | None = None,
        lesion_masks: Sequence[str] | None = None,
    ) -> ScanRead:
        """Read one scan in memory: regions, lesions (detected, or ``lesion_masks`` given), P(malignant), BSI.

        Args:
            scan: the scan's file(s).
            workdir: an existing folder for the lesion label image the classifier reads (``hotspots.nii.gz``).
            loaded: the scan's ``(counts, metadata)`` when the caller has already loaded it (:meth:`load`).
            lesion_masks: mask references of outlined lesions (``seg.dcm#1``, ...): classified instead of the
                detector's hot spots, lesion ``k`` = ``lesion_masks[k - 1]``.
        """
        source = scan if isinstance(scan, str) else " + ".join(scan)
        started = time.perf_counter()
        array, meta = loaded if loaded is not None else self.load(scan)
        spacing = meta.get("affine")
        spacing = (abs(float(spacing[0][0])), abs(float(spacing[1][1]))) if spacing is not None else None
        pixel_mm = self.pixel_mm or pixel_size_mm(array.shape, spacing)
        loaded_at = time.perf_counter()
        regions = check_region_map(self.segmenter(array), array.shape, f"{source} (region map)")
        regions_at = time.perf_counter()
        if lesion_masks is None:
            hotspots = self.detector(array, regions, pixel_mm)
        else:
            masks = [np.asarray(self.image_reader.get_data(self.image_reader.read(m))[0]) > 0 for m in lesion_masks]
            hotspots = hotspots_from_masks(masks, array, regions, pixel_mm, lesion_masks)
        if lesion_masks is None:  # the hot spots' masks; outlined masks are kept as read (they may overlap)
            masks = [hotspots.labels == r["hotspot_id"] for r in hotspots.records]
        label_file = Path(workdir) / "hotspots.nii.gz"
        save_layout_nifti(label_file, hotspots.labels.astype(np.int16))
        ids = [r["hotspot_id"] for r in hotspots.records]
        mask_refs = list(lesion_masks) if lesion_masks is not None else [f"{label_file}#{k}" for k in ids]
        lesions_at = time.perf_counter()
        probabilities = self.classify(scan, mask_refs) if ids else []
        classified_at = time.perf_counter()
        result = self._summarise(source, scan_name(scan), hotspots, regions, probabilities, meta)
        result["lesions_source"] = "detected" if lesion_masks is None else "outlined"
        result["seconds"] = round(time.perf_counter() - started, 3)
        result["seconds_by_stage"] = {
            "load": round(loaded_at - started, 3),
            "regions": round(regions_at - loaded_at, 3),
            "lesions": round(lesions_at - regions_at, 3),
            "classify": round(classified_at - lesions_at, 3),
        }
        return ScanRead(array, meta, regions, hotspots, probabilities, result, masks)

    def read_scan(self, scan: str | Sequence[str], loaded: tuple[np.ndarray, dict] | None = None) -> dict[str, Any]:
        """Read one scan and write its folder; returns its ``read.json`` content.

        ``loaded``: the scan's ``(counts, metadata)`` when the caller has already loaded it (:meth:`load`).
        """
        with atomic_directory(self.output_dir / scan_name(scan)) as tmp:
            read = self.analyse(scan, tmp, loaded)
            save_layout_nifti(tmp / "regions.nii.gz", read.regions.astype(np.int16))
            rows = [{"scan": read.result["name"], **r} for r in read.result["hotspots"]]
            atomic_write_csv(tmp / "hotspots.csv", rows, HOTSPOT_COLUMNS)
            atomic_write_text(tmp / "read.json", json.dumps(read.result, indent=1))
            render_read_png(
                tmp / "read.png", read.array, read.regions, read.hotspots, read.probabilities, self.threshold,
                read.result,
            )  # fmt: skip
        return read.result

    def _summarise(
        self,
        source: str,
        name: str,
        hotspots: HotSpots,
        regions: np.ndarray,
        probabilities: Sequence[float],
        meta: Mapping[str, Any],
    ) -> dict[str, Any]:
        records = []
        involved = np.zeros(regions.shape, bool)
        for record, p in zip(hotspots.records, probabilities, strict=True):
            malignant = p >= self.threshold
            records.append({**record, "p_malignant": round(p, 6), "predicted_class": int(malignant)})
            if malignant:
                involved |= hotspots.labels == record["hotspot_id"]
        bsi, regional = bone_scan_index(involved & bone_mask(regions), regions)
        counts = {}
        for record in records:
            counts.setdefault(record["region"], {"hotspots": 0, "malignant": 0})
            counts[record["region"]]["hotspots"] += 1
            counts[record["region"]]["malignant"] += record["predicted_class"]
        patient_probability = max(probabilities, default=0.0)
        return {
            "scan": source,
            "name": name,
            "views": list(hotspots.views),
            "bsi_views": len(hotspots.views),
            "pixel_mm": [round(v, 4) for v in hotspots.pixel_mm],
            "regions_source": self.regions_source,
            "patient_probability": round(patient_probability, 6),
            "patient_call": int(patient_probability >= self.threshold),
            "hotspots_total": len(records),
            "malignant_hotspots": sum(r["predicted_class"] for r in records),
            "bsi": round(bsi, 4),
            "bsi_regional": {k: round(v, 4) for k, v in regional.items()},
            "hotspots_per_region": counts,
            "region_area_px": {
                REGION_BY_VALUE[v].name: int((regions == v).sum()) for v in BONE_VALUES if (regions == v).any()
            },
            "hotspots": records,
            "patient_id": str(meta.get("patient_id", "") or ""),
            "rules": {
                "threshold": self.threshold,
                "hotspot_class": "malignant when P(malignant) >= threshold",
                "patient_probability": "highest P(malignant) of the scan's hot spots (0 with none)",
                "bsi": "area of the malignant hot spots (thresholded) over each bone region's area, weighted by "
                "skeletal mass (Imbriaco 1998 / Spiers 1968), views present combined",
            },
        }

    # ---- a run --------------------------------------------------------------------------------------------------
    def run(self, scans: Sequence[str | Sequence[str]]) -> int:
        """Read ``scans`` (this process's share in a distributed run), merge, and return the exit status."""
        rank, world = _rank_world()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        names = [scan_name(s) for s in scans]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"scans with the same file name would share an output folder: {repeated[:5]}")
        failures = []
        mine = list(scans)[rank::world]
        for scan in mine:
            try:
                result = self.read_scan(scan)
                logger.info(
                    "%s: %d hot spot(s), %d malignant, BSI %.2f, P(patient) %.3f",
                    result["name"], result["hotspots_total"], result["malignant_hotspots"], result["bsi"],
                    result["patient_probability"],
                )  # fmt: skip
            except Exception as err:  # one bad scan must not stop the others
                source = scan if isinstance(scan, str) else " + ".join(scan)
                logger.error("%s: %s", source, err)
                failures.append({"scan": source, "error": f"{type(err).__name__}: {err}"})
        atomic_write_text(self.output_dir / f".failed.rank{rank}.json", json.dumps(failures))
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            self.merge(names, world)
        if world > 1:
            torch.distributed.barrier()
        failed = json.loads((self.output_dir / "failed.json").read_text()) if rank == 0 else failures
        return 1 if failed else 0

    def merge(self, names: Sequence[str], world: int) -> None:
        """Gather every scan's read.json and the failures into the run's files (first process only)."""
        failures = []
        for r in range(world):
            path = self.output_dir / f".failed.rank{r}.json"
            failures += json.loads(path.read_text())
            path.unlink()
        reads, hot_rows = [], []
        failed_names = {scan_name(f["scan"].split(" + ")[0]) for f in failures}
        for name in names:
            path = self.output_dir / name / "read.json"
            if name in failed_names or not path.is_file():
                continue
            result = json.loads(path.read_text())
            reads.append(result)
            hot_rows += [{"scan": name, **r} for r in result["hotspots"]]
        rows = [
            {
                "scan": r["name"], "patient_probability": r["patient_probability"], "patient_call": r["patient_call"],
                "hotspots": r["hotspots_total"], "malignant_hotspots": r["malignant_hotspots"], "bsi": r["bsi"],
                "bsi_views": r["bsi_views"], "views": "+".join(r["views"]), "regions_source": r["regions_source"],
                "output": r["name"],
            }
            for r in reads
        ]  # fmt: skip
        atomic_write_csv(self.output_dir / "reads.csv", rows, READ_COLUMNS)
        atomic_write_csv(self.output_dir / "hotspots.csv", hot_rows, HOTSPOT_COLUMNS)
        atomic_write_csv(self.output_dir / "failed.csv", failures, ("scan", "error"))
        atomic_write_text(self.output_dir / "failed.json", json.dumps(failures, indent=1))
        summary = {
            **self.metadata,
            "scans_read": len(reads),
            "scans_failed": len(failures),
            "threshold": self.threshold,
            "regions_source": self.regions_source,
            "detector": repr(self.detector),
            "scans": rows,
            "failed": failures,
        }
        atomic_write_text(self.output_dir / "read.json", json.dumps(summary, indent=1, default=str))


def load_classifier(network: torch.nn.Module, checkpoint: str | os.PathLike) -> torch.nn.Module:
    """Load the trained weights (a ``model.pt`` of training) into ``network``, with ignite's ``Checkpoint`` API.

    Raises:
        FileNotFoundError: naming the checkpoint and the override that sets it.
    """
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(
            f"{os.path.abspath(checkpoint)}: no such checkpoint; give the trained model with --checkpoint"
        )
    Checkpoint.load_objects(
        to_load={"model": network}, checkpoint=torch.load(checkpoint, map_location="cpu", weights_only=True)
    )
    return network


def exit_with(status: int) -> None:
    """End the run with ``status`` when it is not 0 (a scan could not be read; the others' results are written)."""
    if status:
        raise SystemExit(status)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def render_read_png(
    path: Path,
    scan: np.ndarray,
    regions: np.ndarray,
    hotspots: HotSpots,
    probabilities: Sequence[float],
    threshold: float,
    result: Mapping[str, Any],
) -> None:
    """The read as a picture: the scan (both views), the region map faintly, numbered hot-spot outlines coloured by
    class (red malignant, blue benign), BSI and patient probability in the title; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = scan.shape
    fig, ax = plt.subplots(figsize=(7, 7 * height / width + 0.5), dpi=110)
    draw_read(ax, scan, regions, hotspots, probabilities, threshold)
    ax.set_title(
        f"{result['name']}: BSI {result['bsi']:.2f}%  P(patient) {result['patient_probability']:.2f}  "
        f"{result['malignant_hotspots']}/{result['hotspots_total']} malignant",
        fontsize=8,
    )
    atomic_save_figure(path, fig)
    plt.close(fig)


def draw_read(
    ax: Any,
    scan: np.ndarray,
    regions: np.ndarray | None,
    hotspots: HotSpots,
    probabilities: Sequence[float],
    threshold: float,
    fontsize: float = 6,
) -> None:
    """Draw a read on a matplotlib axis: the scan (H, W) in inverted grey, the region map faintly (unless ``None``),
    each lesion's outline coloured by class (red malignant, blue benign) and numbered in both views."""
    width = scan.shape[1]
    vmax = float(np.percentile(scan[scan > 0], 99.5)) if (scan > 0).any() else 1.0
    ax.imshow(scan, cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
    if regions is not None:
        ax.imshow(np.ma.masked_equal(regions, 0), cmap="tab20", alpha=0.18, interpolation="nearest", vmin=0, vmax=22)
    for record, p in zip(hotspots.records, probabilities, strict=True):
        k = record["hotspot_id"]
        colour = "#d62728" if p >= threshold else "#1f77b4"
        ax.contour(hotspots.labels == k, levels=[0.5], colors=[colour], linewidths=0.8)
        for offset in (0, width // 2):
            ax.text(record["centre_col"] + offset + 4, record["centre_row"], str(k), color=colour, fontsize=fontsize)
    ax.set_axis_off()
