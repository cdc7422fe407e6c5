"""The annotation app's training task: the bundle's train.yaml on the datastore's final labels.

Each final label is a label image (lesion ``k`` = value ``k``) whose per-lesion class is stored with it, in the
label's info (the ``params`` of ``PUT /datastore/label``), either as

- ``lesion_classes``: ``{"1": "malignant", "2": "benign", ...}`` (or 1/0), or
- 3D Slicer's ``label_info``: ``[{"idx": 1, "name": "malignant"}, ...]``, the segment names (a name containing
  "malignant" or "benign").

Lesions without a class are left out (a lesion the annotator has not decided). The lesions become a datalist of the
bundle's format (``image``, ``mask`` = ``label#k``, ``label``, ``patient_id`` = the image id, ``lesion_id``,
``fold``: every ``num_folds``-th scan in fold 0, held out, the others in fold 1), and ``python -m monai.bundle run
training`` runs configs/train.yaml on it (its validation AUC/accuracy select the checkpoint), in a child process of
the app's Python. The best checkpoint then replaces ``model_dir/model.pt`` atomically, and the next infer uses it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from bundle.data.datalist import load_split

from .engine import LabelEngine, RequestError
from .infers import number_param

logger = logging.getLogger(__name__)

CLASS_VALUES = {"benign": 0, "malignant": 1, "0": 0, "1": 1}
TRAIN_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,
    "batch_size": 8,
    "learning_rate": 0.001,
    "val_fraction": 0.5,
    "num_folds": 5,
    "tracking": "None",
}


def lesion_classes(info: Mapping[str, Any]) -> dict[int, int]:
    """{lesion value: 0 benign / 1 malignant} from a label's info (``lesion_classes`` or Slicer's ``label_info``)."""
    classes: dict[int, int] = {}
    for key, value in dict(info.get("lesion_classes") or {}).items():
        name = str(value).strip().lower()
        if str(key).isdigit() and name in CLASS_VALUES:
            classes[int(key)] = CLASS_VALUES[name]
    for segment in info.get("label_info") or []:
        if not isinstance(segment, Mapping) or not str(segment.get("idx", "")).isdigit():
            continue
        name = str(segment.get("name", "")).lower()
        found = [value for word, value in (("malignant", 1), ("benign", 0)) if word in name]
        if len(found) == 1:
            classes.setdefault(int(segment["idx"]), found[0])
    return classes


def final_lesions(datastore: Datastore, num_folds: int) -> list[dict[str, Any]]:
    """Datalist entries (bundle format) of every classified lesion of the datastore's final labels."""
    entries = []
    images = sorted(datastore.get_labeled_images(DefaultLabelTag.FINAL))
    for index, image_id in enumerate(images):
        label_id = datastore.get_label_by_image_id(image_id, DefaultLabelTag.FINAL)
        if not label_id:
            continue
        label_path = datastore.get_label_uri(label_id, DefaultLabelTag.FINAL)
        classes = lesion_classes(datastore.get_label_info(label_id, DefaultLabelTag.FINAL) or {})
        for k, value in sorted(classes.items()):
            entries.append(
                {
                    "image": datastore.get_image_uri(image_id),
                    "mask": f"{label_path}#{k}",
                    "label": value,
                    "patient_id": image_id,
                    "lesion_id": f"{image_id}_L{k:02d}",
                    "fold": 0 if index % num_folds == 0 else 1,
                }
            )
    return entries


class LesionTrainTask(TrainTask):
    """Retrains the classifier from the final labels (see the module docstring). Request keys (all optional):
    ``max_epochs``, ``batch_size``, ``learning_rate``, ``val_fraction`` (inner validation share of the training
    scans), ``num_folds`` (every n-th scan held out), ``tracking`` (accepted; the bundle's own TensorBoard logs are
    written in the run folder whatever it says)."""

    def __init__(self, engine: LabelEngine) -> None:
        super().__init__("Retrain the lesion classifier (configs/train.yaml) from the final labels' lesion classes")
        self.engine = engine
        self.last: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return dict(TRAIN_DEFAULTS)

    def stats(self) -> dict[str, Any]:
        return dict(self.last)

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any]:
        request = {**TRAIN_DEFAULTS, **request}
        max_epochs = int(number_param(request, "max_epochs", 10, 0, 10000))
        batch_size = int(number_param(request, "batch_size", 8, 0, 4096))
        learning_rate = number_param(request, "learning_rate", 0.001, 0.0, 10.0)
        val_fraction = number_param(request, "val_fraction", 0.5, 0.0, 0.99)
        num_folds = int(number_param(request, "num_folds", 5, 1, 100))
        entries = final_lesions(datastore, num_folds)
        scans = {e["patient_id"] for e in entries}
        if len({e["patient_id"] for e in entries if e["fold"] != 0}) < 2 or len({e["label"] for e in entries}) < 2:
            raise RequestError(
                f"training needs final labels with lesion classes of both kinds on at least 3 scans; found "
                f"{len(entries)} classified lesions on {len(scans)} scans (store each lesion's class with the label: "
                "params {'lesion_classes': {'1': 'malignant', ...}}, or segment names in 3D Slicer)",
                status_code=409,
            )
        run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("train_%Y%m%d_%H%M%S_"), dir=self.engine.model_dir))
        datalist = run_dir / "datalist.json"
        datalist.write_text(json.dumps({"num_folds": 2, "training": entries}, indent=1))
        # train.yaml's own split (held-out fold 0, inner validation by patient): its training lesions bound the batch
        # (it drops an incomplete last batch)
        try:
            training = load_split(datalist, run_dir, 0, "train", val_fraction, 0)
        except Exception as err:
            raise RequestError(f"the final labels do not make a training split: {err}", status_code=409) from None
        batch_size = min(batch_size, len(training))
        command = [
            sys.executable, "-m", "monai.bundle", "run", "training",
            "--config_file", str(self.engine.bundle_root / "configs" / "train.yaml"),
            "--meta_file", str(self.engine.bundle_root / "configs" / "metadata.json"),
            "--bundle_root", str(self.engine.bundle_root), "--dataset_dir", str(run_dir),
            "--datalist", str(datalist), "--output_dir", str(run_dir / "output"), "--fold", "0",
            "--val_fraction", str(val_fraction), "--max_epochs", str(max_epochs), "--batch_size", str(batch_size),
            "--learning_rate", str(learning_rate),
        ]  # fmt: skip
        for key, value in self.engine.overrides.items():
            command += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
        if request.get("device"):
            device = request["device"][0] if isinstance(request["device"], list) else request["device"]
            command += ["--device", f"$torch.device('{device}')"]
        started = time.time()
        log = run_dir / "train.log"
        with open(log, "w") as log_file:
            status = subprocess.run(command, cwd=run_dir, stdout=log_file, stderr=subprocess.STDOUT).returncode
        checkpoint = run_dir / "output" / "checkpoints" / "model.pt"
        if status != 0 or not checkpoint.is_file():
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"training failed (exit status {status}); {log}:\n{tail}")
        staged = self.engine.model_dir / f".model.pt.{os.getpid()}.tmp"
        shutil.copyfile(checkpoint, staged)
        os.replace(staged, self.engine.trained_checkpoint)
        best = re.findall(r"best validation (\w+) = (\S+) at epoch (\d+)", log.read_text(errors="replace"))
        self.last = {
            "checkpoint": str(self.engine.trained_checkpoint),
            "run": str(run_dir),
            "lesions": len(entries),
            "scans": len(scans),
            "held_out_scans": len({e["patient_id"] for e in entries if e["fold"] == 0}),
            "training_lesions": len(training),
            "max_epochs": max_epochs,
            "seconds": round(time.time() - started, 1),
            "tracking": str(request.get("tracking")),
            # train.yaml's model selection on the inner validation scans (nan: one class only there)
            "best_validation": {"metric": best[-1][0], "value": float(best[-1][1]), "epoch": int(best[-1][2])}
            if best
            else None,
        }
        logger.info(f"trained: {self.last}")
        return dict(self.last)
