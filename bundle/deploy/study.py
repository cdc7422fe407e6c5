"""One bone-scan study from DICOM files to a :class:`~bundle.deploy.outputs.StudyResult`, with no Deploy runtime.

:class:`StudyAnalyser` builds the bundle's full read (``configs/read.yaml``: train.yaml's preprocessing and network,
the atlas regions, the hot-spot detector) once, loads the model, and for each study either classifies the lesions
of a DICOM SEG that came with the study, or runs the full read when none did.

The model folder (``-m``) holds ``model.pt`` (a training checkpoint) or ``model.ts`` (TorchScript, from
``ckpt_export``), and optionally ``settings.json``: overrides of ``configs/read.yaml`` ids the model was trained or
chosen with, e.g. ``{"spatial_size": [128, 64], "threshold": 0.5}`` (checkpoint paths in it are relative to the
folder, e.g. ``"hotspots_checkpoint": "hotspots.pt"``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from bundle.data.dicom_nm import SEG_STORAGE
from bundle.deploy.outputs import StudyResult
from bundle.engine.configs import read_bundle_config
from bundle.read.reading import WholeScanReader, load_classifier

logger = logging.getLogger(__name__)

RULES_FILE = Path(__file__).with_name("series_rules.json")
SETTINGS_FILE = "settings.json"
# read.yaml ids a model folder's settings.json may set; the *_checkpoint ones are paths relative to the folder
SETTINGS = (
    "spatial_size", "network_name", "amp", "channels_last", "batch_size", "threshold", "pixel_mm",
    "regions_checkpoint", "regions_spatial_size", "hotspots_checkpoint", "hotspots_spatial_size",
    "hotspots_threshold", "lesion_mode", "local_patch", "context_masks", "patch_size",
)  # fmt: skip


def default_bundle_root() -> str:
    """The bundle this package belongs to (the repository root above ``bundle/``)."""
    return str(Path(__file__).resolve().parents[2])


def model_settings(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``settings.json`` of a model folder (empty without one), checkpoint paths made absolute.

    Raises:
        ValueError: not a JSON object, or an unknown setting (naming the file).
    """
    path = Path(model_dir) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: must hold a JSON object of read.yaml settings")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {list(SETTINGS)}")
    for key in ("regions_checkpoint", "hotspots_checkpoint"):
        if settings.get(key):
            settings[key] = str(Path(model_dir) / settings[key])
    return settings


def seg_references(ds: Dataset) -> set[str]:
    """SOP instance UIDs a DICOM SEG was drawn on (its per-frame derivation and referenced series)."""
    uids = set()
    for group in ds.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in group.get("DerivationImageSequence", []):
            uids |= {str(s.ReferencedSOPInstanceUID) for s in derivation.get("SourceImageSequence", [])}
    for series in ds.get("ReferencedSeriesSequence", []):
        uids |= {str(i.ReferencedSOPInstanceUID) for i in series.get("ReferencedInstanceSequence", [])}
    return uids


def is_seg(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == SEG_STORAGE or str(ds.get("Modality", "")).upper() == "SEG"


class StudyAnalyser:
    """Reads and classifies bone-scan studies with the bundle's own configs and weights.

    Args:
        bundle_root: the bundle's folder (its ``configs/read.yaml`` and ``configs/metadata.json``).
        model_dir: folder with ``model.pt`` or ``model.ts`` (and optionally ``settings.json``).
        workdir: scratch folder for the lesion label images the classifier reads.
    """

    def __init__(self, bundle_root: str | os.PathLike, model_dir: str | os.PathLike, workdir: str | os.PathLike):
        self.bundle_root, self.model_dir = Path(bundle_root), Path(model_dir)
        self.workdir = Path(workdir)
        checkpoint, torchscript = self.model_dir / "model.pt", self.model_dir / "model.ts"
        if not checkpoint.is_file() and not torchscript.is_file():
            raise FileNotFoundError(
                f"{self.model_dir.resolve()}: no model.pt (training checkpoint) or model.ts (TorchScript); "
                "give the model folder with -m"
            )
        settings = model_settings(self.model_dir)
        overrides: dict[str, Any] = {}
        if not checkpoint.is_file():  # TorchScript replaces the network definition; preprocessing stays the bundle's
            overrides["network"] = f"$torch.jit.load({str(torchscript)!r}, map_location=@device).eval()"
        parser = read_bundle_config(
            self.bundle_root, "configs/read.yaml", checkpoint=str(checkpoint), output_dir=str(self.workdir),
            **settings, **overrides,
        )  # fmt: skip
        parser.read_meta(str(self.bundle_root / "configs" / "metadata.json"))
        if checkpoint.is_file():
            load_classifier(parser.get_parsed_content("network"), checkpoint)
        self.reader: WholeScanReader = parser.get_parsed_content("reader")
        meta = parser.get("_meta_", {})
        self.model = {
            "name": str(meta.get("name", "bone scan lesion classifier")),
            "version": str(meta.get("version", "0")),
            "network": str(parser.get_parsed_content("training_config").get_parsed_content("network_name")),
            "weights": str(checkpoint if checkpoint.is_file() else torchscript),
        }

    def analyse(
        self, scan_files: Sequence[str], seg_file: str | None = None, sources: Sequence[Dataset] | None = None
    ) -> StudyResult:
        """Read one study's scan (one NM file, or two single-view files) and classify its lesions: the segments of
        ``seg_file`` when given, else the hot spots of the full read. ``sources``: the files' headers when the caller
        has read them already (in ``scan_files`` order).

        Raises:
            bundle.errors.DataError / bundle.read.reading.ScanError / ValueError: naming the file and the problem.
        """
        scan: str | list[str] = scan_files[0] if len(scan_files) == 1 else list(scan_files)
        started = time.perf_counter()
        sources = (
            list(sources) if sources is not None else [pydicom.dcmread(f, stop_before_pixels=True) for f in scan_files]
        )
        loaded = self.reader.load(scan)
        lesion_masks = None
        if seg_file is not None:
            lesion_masks = [f"{seg_file}#{n}" for n in self.reader.image_reader.mask_selectors(seg_file)]
        self.workdir.mkdir(parents=True, exist_ok=True)
        read = self.reader.analyse(scan, self.workdir, loaded, lesion_masks)
        stages = read.result["seconds_by_stage"]
        seconds = {
            "load": round(stages["load"] + (time.perf_counter() - started) - read.result["seconds"], 3),
            "read": round(stages["regions"] + stages["lesions"], 3),
            "classify": stages["classify"],
        }
        return StudyResult(
            sources=list(sources),
            scan=read.array,
            regions=read.regions,
            hotspots=read.hotspots,
            probabilities=read.probabilities,
            read=read.result,
            lesions_source="SEG" if seg_file is not None else "detected",
            lesion_masks=read.masks,
            model=self.model,
            seconds=seconds,
        )
