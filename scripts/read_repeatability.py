"""Repeatability of the full read's Bone Scan Index on phantom patients (the figure EXINI publishes: ≈ 0.05 BSI).

For each patient the scan is read three times with ``configs/read.yaml``: as generated, flipped left/right (each
view mirrored: the same patient lying the other way round) and as a second noise realisation (new Poisson counts of
the same expected image: the same patient scanned again). Reported: mean and SD of the BSI difference to the first
read, the mean absolute difference, and how often the patient-level call changes.

    python scripts/read_repeatability.py --checkpoint CKPT --out OUT [--seed 0] [--patients 20] [--first 0]
        [--height 1024 --width 512] [-- extra read.yaml overrides, e.g. --spatial_size "[128,64]"]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bundle.phantom import PhantomConfig, generate_patient, patient_rng
from bundle.phantom.writers import write_nifti

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("original", "flipped", "renoised")


def write_variants(out: Path, seed: int, indices: list[int], config: PhantomConfig) -> None:
    """The three versions of each patient's scan as NIfTI under ``out/<variant>/images``."""
    for variant in VARIANTS:
        (out / variant / "images").mkdir(parents=True, exist_ok=True)
    for index in indices:
        scan, _, _ = generate_patient(patient_rng(seed, index), config, f"P{index + 1:05d}")
        image = scan.image
        half = image.shape[1] // 2
        flipped = np.hstack([image[:, :half][:, ::-1], image[:, half:][:, ::-1]])
        rng = np.random.default_rng([seed, index, 7])
        renoised = np.minimum(rng.poisson(scan.expected), np.iinfo(np.int16).max).astype(np.int16)
        for variant, array in zip(VARIANTS, (image, flipped, renoised), strict=True):
            write_nifti(out / variant / "images" / f"{scan.patient_id}.nii.gz", np.ascontiguousarray(array))


def read(folder: Path, checkpoint: str, extra: list[str]) -> dict[str, dict[str, str]]:
    """Run the read over ``folder`` and return its reads.csv rows by scan."""
    command = [
        sys.executable, "-m", "monai.bundle", "run", "reading", "--config_file", str(REPO / "configs/read.yaml"),
        "--bundle_root", str(REPO), "--dataset_dir", str(folder), "--output_dir", str(folder / "read"),
        "--checkpoint", checkpoint, *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(folder / "read" / "reads.csv", newline="") as f:
        return {row["scan"]: row for row in csv.DictReader(f)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="index of the first patient")
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=512)
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    out = Path(args.out)
    indices = list(range(args.first, args.first + args.patients))
    write_variants(out, args.seed, indices, PhantomConfig(height=args.height, width=args.width))
    reads = {variant: read(out / variant, args.checkpoint, extra) for variant in VARIANTS}
    result = {"patients": len(indices), "seed": args.seed, "first": args.first, "overrides": extra}
    base = reads["original"]
    for variant in VARIANTS[1:]:
        diffs = np.array([float(reads[variant][s]["bsi"]) - float(base[s]["bsi"]) for s in base])
        calls = np.array([reads[variant][s]["patient_call"] != base[s]["patient_call"] for s in base])
        result[variant] = {
            "bsi_difference_mean": round(float(diffs.mean()), 4),
            "bsi_difference_sd": round(float(diffs.std(ddof=1)), 4) if len(diffs) > 1 else None,
            "bsi_absolute_difference_mean": round(float(np.abs(diffs).mean()), 4),
            "patient_call_changes": int(calls.sum()),
        }
    result["bsi_mean_original"] = round(float(np.mean([float(r["bsi"]) for r in base.values()])), 4)
    (out / "repeatability.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
