"""MONAI Label app of the bone-scan bundle: hot-spot proposals, lesion classification, retraining (docs/label.md).

    bash scripts/setup_label.sh
    .venv-label/bin/monailabel start_server --app bundle/label --studies DIR [--conf checkpoint models/model.pt]

Infer tasks: ``hotspot_proposal`` (segmentation: the full read's detector, one label value per proposed lesion) and
``lesion_classification`` (classification: benign/malignant per lesion of an uploaded label image, or of a lesion
grown from a click). Train task: ``lesion_classification`` (configs/train.yaml on the final labels' lesion classes).

Settings (``--conf KEY VALUE``):

- ``checkpoint``: the classifier's weights to start from (default ``<bundle>/models/model.pt``);
- ``model_dir``: where trained models and training runs go (default ``<studies>/.bundle_label``);
- ``proposal_threshold``: the detector's threshold for proposals, x normal bone (default 1.2, docs/label.md);
- ``spatial_size`` (e.g. ``[128,64]``), ``network_name``: those the model was trained with (default train.yaml's);
- ``bundle_root``: the bundle folder (default: the folder two levels above this app);
- ``skip_trainers``: ``true`` to serve without the train task.

The app imports bundle.read/bundle.engine/bundle.data; nothing in bundle/ imports it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lib.engine import PROPOSAL_THRESHOLD, LabelEngine, RequestError
from lib.infers import HotSpotProposalTask, LesionClassificationTask
from lib.trainers import LesionTrainTask
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)

MODEL_NAME = "lesion_classification"
PROPOSAL_NAME = "hotspot_proposal"
# the local datastore lists these (MONAI Label's defaults have no DICOM: a whole-body NM scan is one .dcm file)
EXTENSIONS = ("*.nii.gz", "*.nii", "*.dcm", "*.png", "*.tif", "*.tiff")


def json_setting(conf: dict[str, str], key: str) -> Any:
    """A ``--conf`` value given as JSON (``[128,64]``), or the string itself."""
    value = conf[key]
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


class BoneScanLabelApp(MONAILabelApp):
    """Annotation app: proposes hot spots, classifies lesions, learns from the final labels."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        bundle_root = Path(conf.get("bundle_root") or Path(app_dir).resolve().parent.parent)
        local_studies = not studies.startswith(("http://", "https://"))
        default_model_dir = (
            Path(studies) / ".bundle_label" if local_studies else Path.home() / ".cache" / "bone_scan_label"
        )
        overrides = {key: json_setting(conf, key) for key in ("spatial_size", "network_name") if conf.get(key)}
        self.engine = LabelEngine(
            bundle_root=bundle_root,
            checkpoint=conf.get("checkpoint") or bundle_root / "models" / "model.pt",
            model_dir=conf.get("model_dir") or default_model_dir,
            proposal_threshold=float(conf.get("proposal_threshold", PROPOSAL_THRESHOLD)),
            overrides=overrides,
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Bone-scan lesion annotation",
            description="Hot-spot proposals, benign/malignant classification per lesion and retraining on whole-body "
            "bone scans (the bone-scan lesion classification bundle)",
            version=self.engine.version,
            labels={"benign": 0, "malignant": 1},
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return LocalDatastore(
            self.studies,
            extensions=EXTENSIONS,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's infer, after refusing (404) an image id that is neither a file nor in the datastore."""
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if image not in store.list_images():
                raise RequestError(f"image {image!r} is not in the datastore {self.studies}", status_code=404)
        return super().infer(request, datastore)

    def init_infers(self) -> dict[str, InferTask]:
        return {PROPOSAL_NAME: HotSpotProposalTask(self.engine), MODEL_NAME: LesionClassificationTask(self.engine)}

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {MODEL_NAME: LesionTrainTask(self.engine)}


if __name__ == "__main__":  # a quick look without the server: python main.py STUDIES IMAGE_ID
    import sys

    logging.basicConfig(level=logging.INFO)
    app = BoneScanLabelApp(os.path.dirname(os.path.abspath(__file__)), sys.argv[1], {})
    print(json.dumps(app.infer({"model": PROPOSAL_NAME, "image": sys.argv[2]})["params"], indent=1))
