"""Synthetic whole-body bone-scan phantom with lesion masks and a known, image-visible ground truth.

Python API::

    from bundle.phantom import PhantomConfig, generate_dataset, generate_patient, patient_rng

    scan, masks, records = generate_patient(patient_rng(seed=0, index=0), PhantomConfig())
    scan.image          # (H, W) int16: anterior | posterior mirrored
    scan.anterior       # (H, W/2) as acquired;  scan.posterior: (H, W/2) as acquired (not mirrored)
    masks               # (num_lesions, H, W) uint8, each lesion in both halves
    records[0]["label"], records[0]["p_malignant"]

    datalist = generate_dataset("data/phantom", patients=100, seed=0)

Command line: ``python -m bundle.phantom --out DIR --patients N --seed S`` (docs/phantom.md).
"""

from bundle.phantom.dataset import (
    GENERATOR_VERSION,
    OutputDirectoryError,
    best_possible_auc,
    check_output_dir,
    generate_dataset,
    patient_id,
    scan_statistics,
    summarize,
)
from bundle.phantom.lesions import LOGIT_COEFFICIENTS, TUMOR_TYPES
from bundle.phantom.scan import PhantomConfig, PhantomScan, generate_patient, patient_rng
from bundle.phantom.writers import WRITERS, ScanWriter, register_writer

__all__ = [
    "GENERATOR_VERSION",
    "LOGIT_COEFFICIENTS",
    "TUMOR_TYPES",
    "WRITERS",
    "OutputDirectoryError",
    "PhantomConfig",
    "PhantomScan",
    "ScanWriter",
    "best_possible_auc",
    "check_output_dir",
    "generate_dataset",
    "generate_patient",
    "patient_id",
    "patient_rng",
    "register_writer",
    "scan_statistics",
    "summarize",
]
