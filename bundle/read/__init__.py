"""The whole-scan read: skeletal regions, hot-spot detection, the paper's classifier on every hot spot, Bone Scan Index.

Stages (docs/read.md): :mod:`bundle.read.atlas` (atlas-registered regions, the default) or :mod:`bundle.read.learned`
(a segmentation network) → :mod:`bundle.read.hotspots` (candidate lesions) → the classifier of ``configs/train.yaml``
on each hot spot → :mod:`bundle.read.reading` (per-scan results, BSI, pictures). Built on :mod:`bundle.data` and
:mod:`bundle.engine`; never imports the phantom.
"""
