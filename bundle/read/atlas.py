"""Atlas-based skeletal regions: a reference region template registered to each view of a scan with ITK.

The atlas (:data:`DEFAULT_ATLAS`, built by ``scripts/build_region_atlas.py``) holds one view in the anterior layout:
``template`` float16 (2, Ha, Wa), the mean normalised intensity of the anterior and of the (mirrored) posterior view,
and ``labels`` uint8 (Ha, Wa), the region labels of :mod:`bundle.data.regions`. Each half of a scan is registered
separately (its own template): the intensities are normalised (:func:`normalise_view`), both images are brought to
:data:`REGISTRATION_SHAPE`, an affine transform is optimised with ``itk.ImageRegistrationMethodv4`` (mean squares,
two resolution levels, initialised from the body's extent and centre of mass), optionally followed by a B-spline
stage, and the atlas labels are warped onto the view's own grid with nearest-neighbour interpolation.

Physical space: a view of any matrix size spans the same field of view, :data:`VIEW_FOV` (rows, columns) in units
of a pixel at 1024 x 256 per view, with pixel centres at ``(index + 0.5) * spacing``.
"""

from __future__ import annotations

import os
from pathlib import Path

import itk
import numpy as np
from scipy import ndimage

from bundle.data.regions import REGION_BY_VALUE

DEFAULT_ATLAS = Path(__file__).with_name("region_atlas.npz")
REGISTRATION_SHAPE = (256, 64)  # rows, columns of one view while registering
VIEW_FOV = (1024.0, 256.0)  # physical extent (rows, columns) of one view
BODY_THRESHOLD = 0.08  # normalised intensity above which a pixel counts as body when initialising
NORMALISE_PERCENTILE = 99.0
AFFINE_ITERATIONS = 200
BSPLINE_MESH = (3, 8)  # control-grid cells (x, y) of the B-spline stage
BSPLINE_ITERATIONS = 30

ImageF = itk.Image[itk.F, 2]
ImageUC = itk.Image[itk.UC, 2]


def normalise_view(view: np.ndarray) -> np.ndarray:
    """Registration intensities of one view (h, w) of counts: ``sqrt(clip(counts / p99 of the body, 0, 1))``, float32.

    The 99th percentile of the positive pixels makes the bladder, the injection site and hot lesions saturate instead
    of dominating; the square root lifts the soft tissue that outlines the body. An all-zero view stays zero.
    """
    view = np.asarray(view, np.float32)
    positive = view[view > 0]
    if positive.size == 0:
        return np.zeros(view.shape, np.float32)
    scale = float(np.percentile(positive, NORMALISE_PERCENTILE))
    return np.sqrt(np.clip(view / max(scale, 1e-6), 0.0, 1.0)).astype(np.float32)


def resample_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Image (h, w) resampled to ``shape`` over the same field of view (Gaussian anti-aliasing, linear), float32."""
    image = np.asarray(image, np.float32)
    factors = (shape[0] / image.shape[0], shape[1] / image.shape[1])
    sigma = [max(0.0, 0.5 * (1.0 / f - 1.0)) for f in factors]
    if any(s > 0 for s in sigma):
        image = ndimage.gaussian_filter(image, sigma, mode="constant")
    rows = (np.arange(shape[0]) + 0.5) / factors[0] - 0.5
    cols = (np.arange(shape[1]) + 0.5) / factors[1] - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image, grid, order=1, mode="nearest").astype(np.float32)


def _spacing(shape: tuple[int, ...]) -> tuple[float, float]:
    """ITK (x, y) spacing of a view of ``shape`` (rows, columns)."""
    return VIEW_FOV[1] / shape[1], VIEW_FOV[0] / shape[0]


def to_itk(array: np.ndarray) -> itk.Image:
    """A view (rows, columns) as a 2-D ITK image (float32 → F, uint8 → UC) on the physical space of :data:`VIEW_FOV`."""
    image = itk.image_from_array(np.ascontiguousarray(array))
    spacing = _spacing(array.shape)
    image.SetSpacing(spacing)
    image.SetOrigin((spacing[0] / 2, spacing[1] / 2))
    return image


def _body_frame(image: np.ndarray) -> tuple[float, float, float]:
    """Horizontal centre of mass, top row and height of the body of a normalised view, physical units."""
    spacing = _spacing(image.shape)
    rows = np.flatnonzero((image > BODY_THRESHOLD).sum(axis=1) >= 2)
    if rows.size < 2:
        rows = np.array([0, image.shape[0] - 1])
    column_mass = image.sum(axis=0, dtype=np.float64)
    centre_x = float(((np.arange(image.shape[1]) + 0.5) * column_mass).sum() / max(column_mass.sum(), 1e-12))
    return centre_x * spacing[0], float(rows[0]) * spacing[1], float(rows[-1] - rows[0] + 1) * spacing[1]


def initial_affine(fixed: np.ndarray, moving: np.ndarray) -> itk.AffineTransform:
    """Affine (fixed → moving physical points) that matches the bodies' top, height and horizontal centre of mass."""
    fx, ftop, fheight = _body_frame(fixed)
    mx, mtop, mheight = _body_frame(moving)
    scale = float(np.clip(mheight / fheight, 0.7, 1.4))
    transform = itk.AffineTransform[itk.D, 2].New()
    transform.SetCenter((fx, ftop))
    transform.SetMatrix(itk.matrix_from_array(np.diag([scale, scale]).astype(np.float64)))
    transform.SetTranslation((mx - fx, mtop - ftop))
    return transform


def _registration(fixed: itk.Image, moving: itk.Image, transform: itk.Transform, levels: int) -> itk.Transform:
    """Optimise ``transform`` (in place) mapping ``fixed`` to ``moving``: mean squares, regular-step descent."""
    metric = itk.MeanSquaresImageToImageMetricv4[ImageF, ImageF].New()
    scales = itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New()
    scales.SetMetric(metric)
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New()
    optimizer.SetLearningRate(4.0)
    optimizer.SetMinimumStepLength(1e-3)
    optimizer.SetGradientMagnitudeTolerance(1e-10)
    optimizer.SetRelaxationFactor(0.6)
    optimizer.SetNumberOfIterations(AFFINE_ITERATIONS)
    optimizer.SetScalesEstimator(scales)
    optimizer.SetReturnBestParametersAndValue(True)
    optimizer.SetNumberOfWorkUnits(1)
    method = itk.ImageRegistrationMethodv4[ImageF, ImageF].New()
    method.SetFixedImage(fixed)
    method.SetMovingImage(moving)
    method.SetMetric(metric)
    method.SetOptimizer(optimizer)
    method.SetInitialTransform(transform)
    method.SetInPlace(True)
    method.SetNumberOfLevels(levels)
    method.SetShrinkFactorsPerLevel([2**k for k in reversed(range(levels))])
    method.SetSmoothingSigmasPerLevel([float(2**k) for k in reversed(range(levels))])
    method.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False)
    method.SetNumberOfWorkUnits(1)
    method.Update()
    return transform


def _bspline_stage(fixed: itk.Image, moving: itk.Image, affine: itk.Transform) -> itk.Transform:
    """B-spline transform (identity start) optimised after ``affine``, on a coarse control grid."""
    bspline = itk.BSplineTransform[itk.D, 2, 3].New()
    initializer = itk.BSplineTransformInitializer[type(bspline), ImageF].New()
    initializer.SetTransform(bspline)
    initializer.SetImage(fixed)
    initializer.SetTransformDomainMeshSize(BSPLINE_MESH)
    initializer.InitializeTransform()
    bspline.SetIdentity()
    metric = itk.MeanSquaresImageToImageMetricv4[ImageF, ImageF].New()
    optimizer = itk.LBFGSBOptimizerv4.New()
    count = bspline.GetNumberOfParameters()
    optimizer.SetBoundSelection(_unbounded(count))
    optimizer.SetLowerBound(itk.Array[itk.D](count, 0.0))
    optimizer.SetUpperBound(itk.Array[itk.D](count, 0.0))
    optimizer.SetNumberOfIterations(BSPLINE_ITERATIONS)
    optimizer.SetMaximumNumberOfFunctionEvaluations(2 * BSPLINE_ITERATIONS)
    optimizer.SetCostFunctionConvergenceFactor(1e7)
    optimizer.SetGradientConvergenceTolerance(1e-8)
    method = itk.ImageRegistrationMethodv4[ImageF, ImageF].New()
    method.SetFixedImage(fixed)
    method.SetMovingImage(moving)
    method.SetMetric(metric)
    method.SetOptimizer(optimizer)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline)
    method.SetInPlace(True)
    method.SetNumberOfLevels(1)
    method.SetShrinkFactorsPerLevel([1])
    method.SetSmoothingSigmasPerLevel([1.0])
    method.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False)
    method.SetNumberOfWorkUnits(1)
    method.Update()
    return bspline


def _unbounded(count: int) -> itk.Array:
    """L-BFGS-B bound selection of ``count`` unbounded parameters."""
    array = itk.Array[itk.SL](count)
    array.Fill(0)
    return array


def register_view(fixed: np.ndarray, moving: np.ndarray, deformable: bool = False) -> itk.Transform:
    """Transform mapping physical points of ``fixed`` onto ``moving`` (both normalised views of the same shape).

    Affine on two resolution levels from :func:`initial_affine`; with ``deformable`` a B-spline stage
    (:data:`BSPLINE_MESH` control cells) follows, composed after the affine.
    """
    fixed_image, moving_image = to_itk(np.asarray(fixed, np.float32)), to_itk(np.asarray(moving, np.float32))
    affine = _registration(fixed_image, moving_image, initial_affine(fixed, moving), levels=2)
    if not deformable:
        return affine
    bspline = _bspline_stage(fixed_image, moving_image, affine)
    composite = itk.CompositeTransform[itk.D, 2].New()
    composite.AddTransform(affine)
    composite.AddTransform(bspline)  # applied first: fixed point → B-spline → affine → moving point
    return composite


def warp(image: np.ndarray, transform: itk.Transform, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    """``image`` (moving grid, any shape) resampled on a view grid of ``shape`` through ``transform``.

    ``nearest`` for labels (uint8 in and out), linear interpolation for intensities (float32); outside → 0.
    """
    array = np.ascontiguousarray(image, np.uint8 if nearest else np.float32)
    image_type = ImageUC if nearest else ImageF
    moving = to_itk(array)
    interpolator = (
        itk.NearestNeighborInterpolateImageFunction[image_type, itk.D].New()
        if nearest
        else itk.LinearInterpolateImageFunction[image_type, itk.D].New()
    )
    spacing = _spacing(shape)
    resample = itk.ResampleImageFilter[image_type, image_type].New()
    resample.SetInput(moving)
    resample.SetTransform(transform)
    resample.SetInterpolator(interpolator)
    resample.SetSize((int(shape[1]), int(shape[0])))
    resample.SetOutputSpacing(spacing)
    resample.SetOutputOrigin((spacing[0] / 2, spacing[1] / 2))
    resample.SetDefaultPixelValue(0)
    resample.SetNumberOfWorkUnits(1)
    resample.Update()
    return itk.array_from_image(resample.GetOutput()).copy()


def load_atlas(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(template, labels)`` of an atlas file: float32 (2, Ha, Wa) anterior/posterior, int16 (Ha, Wa)."""
    path = Path(DEFAULT_ATLAS if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(f"region atlas {path} not found (build it with scripts/build_region_atlas.py)")
    with np.load(path) as data:
        template, labels = np.asarray(data["template"], np.float32), np.asarray(data["labels"], np.int16)
    if template.ndim != 3 or template.shape[0] != 2 or labels.shape != template.shape[1:]:
        raise ValueError(f"region atlas {path}: template {template.shape} and labels {labels.shape} do not match")
    unknown = sorted(set(np.unique(labels).tolist()) - set(REGION_BY_VALUE) - {0})
    if unknown:
        raise ValueError(f"region atlas {path}: unknown region labels {unknown}")
    return template, labels


class AtlasRegionSegmenter:
    """Skeletal-region map of a scan by registering the region atlas to each of its views.

    Args:
        atlas: atlas ``.npz`` file (``template`` (2, Ha, Wa), ``labels`` (Ha, Wa)); None = :data:`DEFAULT_ATLAS`.
        deformable: add the B-spline stage after the affine one (off by default: on the phantom it helps the arms
            and legs but costs as much on the trunk, for 3-10 x the time; docs/read_regions_atlas.md).
        threads: ITK's global default number of threads (1 = deterministic and light on shared machines).
    """

    def __init__(self, atlas: str | os.PathLike | None = None, deformable: bool = False, threads: int = 1) -> None:
        self.template, self.labels = load_atlas(atlas)
        self.deformable = deformable
        self.reg_template = np.stack([resample_to(t, REGISTRATION_SHAPE) for t in self.template])
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))

    def segment_view(self, view: np.ndarray, posterior: bool) -> np.ndarray:
        """Region labels (h, w) int16 of one view (h, w) of counts in the anterior layout; zeros for an empty view."""
        view = np.asarray(view, np.float32)
        if not np.any(view > 0):
            return np.zeros(view.shape, np.int16)
        fixed = resample_to(normalise_view(view), REGISTRATION_SHAPE)
        transform = register_view(fixed, self.reg_template[int(posterior)], self.deformable)
        return warp(self.labels, transform, view.shape, nearest=True).astype(np.int16)

    def __call__(self, scan: np.ndarray) -> np.ndarray:
        """Region map (H, W) int16 of a scan (H, W) of counts in the stored layout (anterior | mirrored posterior)."""
        scan = np.asarray(scan)
        if scan.ndim != 2:
            raise ValueError(f"a scan is a 2-D array (H, W) in the stored layout, got shape {scan.shape}")
        if scan.shape[1] % 2:
            raise ValueError(f"a scan has an even width (two views side by side), got shape {scan.shape}")
        if scan.size == 0 or min(scan.shape[0], scan.shape[1] // 2) < 8:
            raise ValueError(f"scan of shape {scan.shape} is too small for the region atlas (at least 8 x 16)")
        scan = scan.astype(np.float32)
        if not np.all(np.isfinite(scan)):
            raise ValueError("scan holds non-finite values (NaN or inf)")
        if not np.any(scan > 0):
            raise ValueError("scan is empty: no pixel has positive counts")
        half = scan.shape[1] // 2
        return np.hstack([self.segment_view(scan[:, :half], False), self.segment_view(scan[:, half:], True)])
