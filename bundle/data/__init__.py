"""Data: reading scans and masks (DICOM NM/SEG, NIfTI, PNG, TIFF) into the pipeline's layout, datalists (schema,
folds, splits, builder), deep validation, and the bundle's own transforms. Command line: ``python -m bundle.data``."""
