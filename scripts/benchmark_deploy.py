"""Seconds per study of the MONAI Deploy application (bundle/deploy), by stage, on a 10-lesion phantom scan.

Makes a full-size phantom (1024 x 512), takes a patient with at least 10 lesions, writes its scan as DICOM NM and
a SEG of 10 of its lesions, and runs ``python -m bundle.deploy`` twice per classifier input size: on the scan with
the SEG (10 outlined lesions classified) and on the scan alone (the full read: regions, hot spots, classifier).
The classifier is an untrained ResNet50 (timing only; its probabilities mean nothing). Stages come from each
study's result.json (load, read = regions + lesions, classify, write) and the whole process is timed too.

    python scripts/benchmark_deploy.py --out docs/benchmark_deploy.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def make_study(work: Path, lesions: int = 10, seed: int = 11) -> tuple[Path, Path]:
    """(folder with the NM scan and a SEG of ``lesions`` lesions, folder with the NM scan alone)."""
    from bundle.data.readers import WholeBodyScanReader
    from bundle.phantom.dataset import generate_dataset
    from bundle.phantom.dicom import write_nm_whole_body, write_seg

    data = work / "phantom"
    generate_dataset(data, patients=40, seed=seed)
    datalist = json.loads((data / "datalist.json").read_text())
    by_patient: dict[str, list[dict]] = {}
    for item in datalist["training"]:
        by_patient.setdefault(item["patient_id"], []).append(item)
    patient, items = max(by_patient.items(), key=lambda kv: (len(kv[1]) >= lesions, -abs(len(kv[1]) - lesions)))
    if len(items) < lesions:
        raise SystemExit(f"no phantom patient with {lesions} lesions (most: {len(items)})")
    reader = WholeBodyScanReader()
    scan = reader.get_data(reader.read(str(data / items[0]["image"])))[0]
    half = scan.shape[1] // 2
    with_seg, alone = work / "in_seg", work / "in_read"
    nm = write_nm_whole_body(with_seg / "nm.dcm", scan[:, :half], scan[:, half:][:, ::-1], patient, seed=1)
    masks = {k: reader.get_data(reader.read(str(data / e["mask"])))[0] > 0 for k, e in enumerate(items[:lesions], 1)}
    write_seg(with_seg / "seg.dcm", nm, masks, seed=1)
    write_nm_whole_body(alone / "nm.dcm", scan[:, :half], scan[:, half:][:, ::-1], patient, seed=2)
    return with_seg, alone


def run_app(inbox: Path, out: Path, model: Path) -> dict:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bundle.deploy", "-i", str(inbox), "-o", str(out), "-m", str(model)],
        check=True, capture_output=True, cwd=out.parent,
    )  # fmt: skip
    wall = time.perf_counter() - started
    (result,) = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    return {"process_s": round(wall, 2), "lesions": len(result["lesions"]), "stages_s": result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument("--sizes", default="512x256,128x64", help="classifier input sizes (HxW, comma-separated)")
    args = parser.parse_args()
    import torch

    from bundle.nets import build_network

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with_seg, alone = make_study(work)
        for size in args.sizes.split(","):
            height, width = (int(v) for v in size.split("x"))
            model = work / f"model_{size}"
            model.mkdir()
            torch.manual_seed(0)
            torch.save(build_network("resnet50").state_dict(), model / "model.pt")
            (model / "settings.json").write_text(json.dumps({"spatial_size": [height, width]}))
            for mode, inbox in (("SEG given (10 lesions)", with_seg), ("full read", alone)):
                out = work / f"out_{size}_{mode.split()[0]}"
                row = {"classifier_input": size, "lesions_from": mode, **run_app(inbox, out, model)}
                rows.append(row)
                print(json.dumps(row))
    report = {
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "scan": "phantom 1024 x 512 (two 1024 x 256 views), DICOM NM; untrained ResNet50 (timing only)",
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
