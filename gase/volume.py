"""The one volume type of GASE: a voxel array plus its IJK-to-RAS geometry, and file IO.

Geometry is converted between ITK's LPS and Slicer's RAS in exactly one place,
:func:`_lps_to_ras_matrix` / :func:`_ras_to_lps_matrix`; everything else works in RAS.

Arrays are indexed ``[k, j, i]`` (slice, row, column), as ``sitk.GetArrayFromImage`` and
``slicer.util.arrayFromVolume`` return them. ``ijk_to_ras`` maps ``(i, j, k, 1)`` to RAS millimetres.

>>> import numpy as np
>>> v = Volume(np.zeros((2, 3, 4), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]))
>>> v.spacing
(0.5, 0.5, 2.0)
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import GeometryError, InputError, OutputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass
class Volume:
    """Voxels ``array`` (K, J, I) and the 4x4 ``ijk_to_ras`` matrix (mm).

    The direction columns of ``ijk_to_ras[:3, :3]`` are the RAS directions of the i, j, k axes
    scaled by the spacing; they must be orthogonal and non-zero (checked on construction).
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.ijk_to_ras.shape != (4, 4):
            raise GeometryError(f"IJK-to-RAS must be a 4x4 matrix, got shape {self.ijk_to_ras.shape}.")
        if self.array.ndim != 3:
            raise InputError(
                f"Expected a 3D volume, got an array of {self.array.ndim} dimension(s) with shape "
                f"{tuple(self.array.shape)}. Give a single-channel 3D image (split 4D/RGB data first)."
            )
        check_geometry(self.ijk_to_ras)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm."""
        return tuple(float(x) for x in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 unit RAS direction columns of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / np.asarray(self.spacing)[None, :]

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume with the same geometry and another array of the same shape."""
        if tuple(array.shape) != self.shape:
            raise InputError(f"Array shape {array.shape} does not match volume shape {self.shape}.")
        return Volume(array, self.ijk_to_ras.copy())

    def same_geometry(self, other: "Volume", atol: float = 1e-4) -> bool:
        return self.shape == other.shape and bool(np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=atol))


def make_ijk_to_ras(spacing: Sequence[float], direction: np.ndarray | None = None,
                    origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Build a 4x4 IJK-to-RAS matrix from spacing (i, j, k mm), RAS direction columns and origin."""
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = d * np.asarray(spacing, dtype=np.float64)[None, :]
    m[:3, 3] = origin
    return m


def check_geometry(ijk_to_ras: np.ndarray) -> None:
    """Raise :class:`GeometryError` for non-finite, zero-spacing or non-orthogonal geometry."""
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        raise GeometryError("The image geometry contains NaN or infinite values. Fix the file header "
                            "(spacing, origin, direction) and load it again.")
    cols = m[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 1e-6):
        raise GeometryError(f"Voxel spacing {tuple(np.round(spacing, 6))} mm has a zero axis. Set a "
                            "positive spacing in the image header.")
    d = cols / spacing[None, :]
    gram = d.T @ d
    if not np.allclose(gram, np.eye(3), atol=1e-3):
        raise GeometryError("The image axes are not orthogonal (sheared direction matrix). GASE needs an "
                            "orthogonal grid: resample the image onto one (e.g. Slicer 'Resample Scalar "
                            "Volume') and try again.")


# ---------------------------------------------------------------------------------------------
# LPS <-> RAS: the one conversion
# ---------------------------------------------------------------------------------------------

def _lps_to_ras_matrix(spacing: Sequence[float], direction_lps: Sequence[float],
                       origin_lps: Sequence[float]) -> np.ndarray:
    """ITK geometry (LPS direction, row-major flat 9 values) to a 4x4 IJK-to-RAS matrix."""
    ijk_to_lps = make_ijk_to_ras(spacing, np.asarray(direction_lps, dtype=np.float64).reshape(3, 3), origin_lps)
    return LPS_TO_RAS @ ijk_to_lps


def _ras_to_lps_matrix(ijk_to_ras: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """A 4x4 IJK-to-RAS matrix to ITK (spacing, flat LPS direction, LPS origin)."""
    ijk_to_lps = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=np.float64)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing[None, :]
    return tuple(float(s) for s in spacing), tuple(float(x) for x in direction.ravel()), \
        tuple(float(x) for x in ijk_to_lps[:3, 3])


def volume_from_sitk(image) -> Volume:
    """SimpleITK image (3D, scalar) to :class:`Volume`."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The image has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(RGB or vector data). GASE needs a single-channel grey-scale MR volume: convert "
                         "it to scalar (e.g. take one channel) first.")
    if image.GetDimension() != 3:
        raise InputError(f"The image is {image.GetDimension()}D; GASE needs a 3D volume. For a 4D series "
                         "extract one time point / channel first; a single 2D slice cannot be segmented.")
    arr = sitk.GetArrayFromImage(image)
    return Volume(arr, _lps_to_ras_matrix(image.GetSpacing(), image.GetDirection(), image.GetOrigin()))


def volume_to_sitk(volume: Volume):
    """:class:`Volume` to a SimpleITK image with LPS geometry."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    spacing, direction, origin = _ras_to_lps_matrix(volume.ijk_to_ras)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return image


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES) and not name.startswith(".")


def case_name(path: Path) -> str:
    """File name without image suffixes: ``knee_01.nii.gz`` -> ``knee_01``, ``a.seg.nrrd`` -> ``a``."""
    name = Path(path).name
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_volume(path: str | os.PathLike, *, max_voxels: int = 1024 * 1024 * 1024) -> Volume:
    """Read a NRRD, NIfTI, MHA file or a DICOM series folder into a :class:`Volume`.

    Raises :class:`InputError` with the fix for missing, empty, truncated, non-3D, RGB, absurdly large
    files and for DICOM folders with several series or missing slices.
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder. Check the path.")
    if p.is_dir():
        return _read_dicom_folder(p, max_voxels=max_voxels)
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty (0 bytes). Re-export the image.")
    if not is_image_file(p):
        raise InputError(f"{p}: unsupported file type. GASE reads {', '.join(IMAGE_SUFFIXES)} files and "
                         "DICOM series folders.")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        size = reader.GetSize()
        if int(np.prod(size, dtype=np.int64)) > max_voxels:
            raise InputError(f"{p}: {size} voxels is larger than GASE handles ({max_voxels} voxels). Crop or "
                             "downsample the image first.")
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reader error"
        raise InputError(f"{p}: cannot be read as an image ({first}). The file may be truncated or not "
                         "what its extension says; re-export it as NRRD or NIfTI.") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() == 2:
        raise InputError(f"{p}: this is a 2D image; GASE segments 3D volumes. Load the whole series.")
    return volume_from_sitk(image)


def _read_dicom_folder(folder: Path, *, max_voxels: int) -> Volume:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or []
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder. Point GASE at a folder of DICOM "
                         "files or at an image file.")
    if len(series) > 1:
        raise InputError(f"{folder}: the folder mixes {len(series)} DICOM series ({', '.join(series[:3])}"
                         f"{', ...' if len(series) > 3 else ''}). Put each series in its own folder.")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    if len(files) < 2:
        raise InputError(f"{folder}: the DICOM series has a single slice; GASE needs a 3D volume.")
    positions = []
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        r.ReadImageInformation()
        positions.append(np.asarray(r.GetOrigin(), dtype=np.float64))
    steps = np.linalg.norm(np.diff(np.stack(positions), axis=0), axis=1)
    if np.any(steps <= 1e-6):
        raise InputError(f"{folder}: two DICOM files have the same slice position (duplicates or several "
                         "acquisitions). Keep one file per slice.")
    if steps.max() > 1.5 * np.median(steps):
        raise InputError(f"{folder}: the DICOM series has a gap (a slice step of {steps.max():.2f} mm where "
                         f"the usual step is {np.median(steps):.2f} mm): a slice is missing. Export the "
                         "complete series.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError:
        raise InputError(f"{folder}: the DICOM series cannot be read (corrupt or unsupported files).") from None
    if int(np.prod(image.GetSize(), dtype=np.int64)) > max_voxels:
        raise InputError(f"{folder}: {image.GetSize()} voxels is larger than GASE handles.")
    return volume_from_sitk(image)


# ---------------------------------------------------------------------------------------------
# Writing: to a temporary name in the same folder, then an atomic rename
# ---------------------------------------------------------------------------------------------

def check_output_path(path: Path, overwrite: bool) -> None:
    """Raise :class:`OutputError` if ``path`` exists (and not ``overwrite``) or its folder is unwritable."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists. Choose another output folder or pass --overwrite.")
    if folder.exists() and not os.access(folder, os.W_OK):
        raise OutputError(f"{folder}: the output folder is not writable. Choose a folder you can write to.")


def atomic_write(path: Path, write_fn, *, overwrite: bool = False, suffix: str | None = None) -> Path:
    """Call ``write_fn(tmp_path)`` then rename the temporary file to ``path`` (no partial outputs)."""
    path = Path(path)
    check_output_path(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot create the output folder ({exc.strerror}).") from None
    sfx = suffix if suffix is not None else "".join(path.suffixes[-2:]) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=".gase-", suffix=sfx, dir=str(path.parent))
    os.close(fd)
    try:
        write_fn(Path(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc}).") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_volume(volume: Volume, path: str | os.PathLike, *, overwrite: bool = False,
                 compress: bool = True) -> Path:
    """Write a volume (NRRD, NIfTI or MHA by extension), atomically."""
    import SimpleITK as sitk

    path = Path(path)
    if not is_image_file(path):
        raise OutputError(f"{path}: unsupported output type; use .nrrd, .nii.gz or .mha.")
    image = volume_to_sitk(volume)
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), compress), overwrite=overwrite)


def iter_image_files(folder: Path) -> Iterable[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))
