"""MONAI Deploy application of the bundle (docs/deploy.md): DICOM bone-scan studies in, DICOM SR / SEG /
encapsulated PDF out. ``outputs`` and ``study`` need highdicom only; ``operators`` and ``app`` need
monai-deploy-app-sdk (``pip install -e .[deploy]``). Sits on top of ``read``, ``engine`` and ``data``."""
