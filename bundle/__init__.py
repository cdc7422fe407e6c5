"""Bone-scan lesion classifier: the parts of the MONAI bundle that MONAI itself does not provide."""

__version__ = "0.1.0"
