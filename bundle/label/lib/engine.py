"""The bundle's own read pipeline, built once for the annotation app: configs/read.yaml's WholeScanReader.

Everything the app computes comes from the bundle's configs and code, not from copies: the scan reader and its
whole-body checks, the region atlas and the hot-spot detector of the full read (configs/read.yaml, docs/read.md),
and train.yaml's preprocessing, network, inferer and postprocessing for the classifier (read.yaml reads them by
path). The classifier's weights are the newest of: the app's own trained model (``model_dir/model.pt``, written by
the training task) and the checkpoint given at start (``--conf checkpoint``, default ``models/model.pt``); a new
file is picked up at the next request.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.bundle import ConfigParser

from bundle.read.hotspots import HotSpots, pixel_size_mm
from bundle.read.reading import WholeScanReader, load_classifier

logger = logging.getLogger(__name__)

# The proposal task's operating point of the classical detector (x normal bone). The full read's default (2.2) finds
# under half of the phantom's lesions; proposals aim at 80 %, at the price of many false positives for the annotator
# to reject. Chosen on a tuning set that no test or report uses (30 phantom patients of seed 1000, the read's tuning
# seed, at 1024 x 512, `python -m bundle.read froc --regions atlas`): the highest threshold whose lesion sensitivity
# reached 0.8 there -- 1.2: 0.82 with 98 false positives per scan (1.3: 0.76 / 64). docs/label.md has the table;
# `--conf proposal_threshold 2.2` gives the read's operating point (about 5 false positives per scan).
PROPOSAL_THRESHOLD = 1.2


class RequestError(HTTPException):
    """A request the app refuses (HTTP 4xx) with a message naming the problem; the server keeps serving."""

    def __init__(self, detail: str, status_code: int = 422) -> None:
        super().__init__(status_code=status_code, detail=detail)


class LabelEngine:
    """The read pipeline of one bundle, shared by the app's infer and train tasks (thread-safe).

    Args:
        bundle_root: the bundle folder (configs/, models/).
        checkpoint: the classifier's weights to start from (``models/model.pt`` layout: a plain state_dict).
        model_dir: where the app keeps the models it trains (``model.pt``) and their runs.
        proposal_threshold: the hot-spot detector's threshold for proposals (x normal bone).
        overrides: read.yaml/train.yaml settings of the trained model, e.g. ``{"spatial_size": [64, 32]}``.
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        checkpoint: str | os.PathLike,
        model_dir: str | os.PathLike,
        proposal_threshold: float = PROPOSAL_THRESHOLD,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.bundle_root = Path(bundle_root).resolve()
        self.start_checkpoint = Path(checkpoint)
        self.model_dir = Path(model_dir)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.overrides = dict(overrides or {})
        self.proposal_threshold = float(proposal_threshold)
        self.lock = threading.RLock()
        parser = ConfigParser()
        parser.read_config(str(self.bundle_root / "configs" / "read.yaml"))
        parser.read_meta(str(self.bundle_root / "configs" / "metadata.json"))
        parser["bundle_root"] = str(self.bundle_root)
        parser["output_dir"] = str(self.model_dir / "read")
        parser["classical_detector"]["threshold"] = self.proposal_threshold
        for key, value in self.overrides.items():
            parser[key] = value
        self.parser = parser
        self.reader: WholeScanReader = parser.get_parsed_content("reader")
        self.version = str(parser.get_parsed_content("_meta_#version"))
        self.loaded: tuple[str, float] | None = None

    # ---- weights ------------------------------------------------------------------------------------------------
    @property
    def trained_checkpoint(self) -> Path:
        """Where the training task puts the app's newest model."""
        return self.model_dir / "model.pt"

    def current_checkpoint(self) -> Path:
        """The newest of the app's trained model and the start checkpoint (by modification time)."""
        candidates = [p for p in (self.trained_checkpoint, self.start_checkpoint) if p.is_file()]
        if not candidates:
            raise RequestError(
                f"no classifier weights: neither {self.trained_checkpoint} nor {self.start_checkpoint} exists "
                "(start the server with --conf checkpoint PATH, or train first)",
                status_code=409,
            )
        return max(candidates, key=lambda p: p.stat().st_mtime)

    def ensure_weights(self) -> Path:
        """Load the current checkpoint into the network when it changed since the last request."""
        path = self.current_checkpoint()
        stamp = (str(path), path.stat().st_mtime)
        if stamp != self.loaded:
            load_classifier(self.reader.network, path)
            self.reader.network.eval()
            self.loaded = stamp
            logger.info(f"classifier weights: {path}")
        return path

    # ---- reading ------------------------------------------------------------------------------------------------
    def load_scan(self, image: str) -> tuple[np.ndarray, dict, tuple[float, float]]:
        """(counts (H, W) float32, metadata, pixel size mm) of a whole-body scan; 422 naming the file otherwise."""
        if not image or not os.path.exists(image):
            raise RequestError(f"image {image!r} does not exist", status_code=404)
        try:
            array, meta = self.reader.load(image)
        except Exception as err:  # the reader's errors name the file and the problem
            raise RequestError(f"not a whole-body bone scan the bundle can read: {err}") from None
        affine = meta.get("affine")
        spacing = (abs(float(affine[0][0])), abs(float(affine[1][1]))) if affine is not None else None
        return array, meta, self.reader.pixel_mm or pixel_size_mm(array.shape, spacing)

    def detect(self, array: np.ndarray, pixel_mm: tuple[float, float], source: str) -> tuple[np.ndarray, HotSpots]:
        """(region map, hot spots) of a loaded scan: the full read's atlas regions and detector."""
        from bundle.data.regions import check_region_map

        regions = check_region_map(self.reader.segmenter(array), array.shape, f"{source} (region map)")
        return regions, self.reader.detector(array, regions, pixel_mm)

    def classify(self, image: str, mask_refs: Sequence[str]) -> list[float]:
        """P(malignant) of each lesion mask reference (``labels.nii.gz#3``) on ``image``: train.yaml's
        preprocessing, network and postprocessing, as configs/inference.yaml runs them."""
        with self.lock:
            self.ensure_weights()
            with torch.no_grad():
                return self.reader.classify(image, list(mask_refs))
