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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import GeometryError, InputError, OutputError
from .fsutil import temp_file

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
        raise GeometryError(f"Voxel spacing {tuple(round(float(s), 6) for s in spacing)} mm has a zero axis. Set a "
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


def nrrd_space_directions(ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NRRD's ``space directions`` (3, 3), one row per voxel axis i, j, k, and ``space origin`` (3,), in LPS."""
    spacing, direction, origin = _ras_to_lps_matrix(ijk_to_ras)
    columns = np.asarray(direction).reshape(3, 3) * np.asarray(spacing)[None, :]
    return columns.T, np.asarray(origin)


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
    if "complex" in image.GetPixelIDTypeAsString():
        raise InputError("The image has complex-valued voxels; GASE needs a real grey-scale image. Segment the "
                         "magnitude image instead.")
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
        _check_nifti_complete(p)
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reader error"
        if "spacing" in first.lower():
            raise GeometryError(f"{p}: the header gives an invalid voxel spacing ({first}). Spacing must be "
                                "positive: fix it in the header and save the image again.") from None
        raise InputError(f"{p}: cannot be read as an image ({first}). The file may be truncated or not "
                         "what its extension says; re-export it as NRRD or NIfTI.") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() == 2:
        raise InputError(f"{p}: this is a 2D image; GASE segments 3D volumes. Load the whole series.")
    try:
        return volume_from_sitk(image)
    except InputError as exc:
        raise type(exc)(f"{p}: {exc}") from None


def _check_nifti_complete(path: Path) -> None:
    """Raise :class:`InputError` for a truncated NIfTI file (``.nii`` or ``.nii.gz``).

    ITK reads those without complaint and fills the missing voxels, so the size the header promises
    (``vox_offset`` + voxels x ``bitpix``) is compared with the file size, or for ``.nii.gz`` with the
    uncompressed size in the gzip trailer (modulo 2**32), which a cut-off file does not carry.
    """
    import gzip
    import struct

    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    packed = name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if packed else open(path, "rb")) as f:
            head = f.read(540)
    except (OSError, EOFError):
        return  # not gzip after all (or unreadable): ITK's reader gives the message
    expected = None
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:  # NIfTI-1
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
        elif len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:  # NIfTI-2
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
        else:
            continue
        if 1 <= dims[0] <= 7 and bitpix > 0:
            expected = max(offset, 348) + int(np.prod([max(1, d) for d in dims[1:1 + dims[0]]], dtype=np.int64)) \
                * bitpix // 8
        break
    if expected is None:
        return  # not a header we understand: let ITK judge
    if packed:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            stored = struct.unpack("<I", f.read(4))[0]
        complete = (stored - expected) % 2**32 < 2**20  # a little slack for extensions/padding
    else:
        complete = path.stat().st_size >= expected
    if not complete:
        raise InputError(f"{path}: the file is truncated (shorter than its header says). Copy or re-export the "
                         "complete image.")


def _read_dicom_folder(folder: Path, *, max_voxels: int) -> Volume:
    import SimpleITK as sitk

    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints "No Series were found" to stderr itself
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
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
        try:
            r.ReadImageInformation()
        except RuntimeError:
            raise InputError(f"{folder}: the DICOM file {Path(f).name} cannot be read (damaged or truncated). "
                             "Export the series again.") from None
        positions.append(np.asarray(r.GetOrigin(), dtype=np.float64))
    steps = np.linalg.norm(np.diff(np.stack(positions), axis=0), axis=1)
    if np.any(steps <= max(1e-6, 0.05 * float(steps.max()))):  # (nearly) the same position twice
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


def check_output_folder(folder: Path) -> None:
    """Raise :class:`OutputError` unless ``folder`` is, or can be created as, a writable folder (checked
    before any work, so a long run does not fail at its very end)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder. Give an output folder (it is created if missing).")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{folder}: cannot be created because {existing} is a file. Choose another output folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "the output folder" if existing == folder else f"{existing}, where it would be created,"
        raise OutputError(f"{folder}: {where} is not writable. Choose a folder you can write to.")


def atomic_write(path: Path, write_fn, *, overwrite: bool = False, suffix: str | None = None) -> Path:
    """Call ``write_fn(tmp_path)`` then rename the temporary file to ``path`` (no partial outputs)."""
    path = Path(path)
    check_output_path(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot create the output folder ({exc.strerror}).") from None
    sfx = suffix if suffix is not None else "".join(path.suffixes[-2:]) or ".tmp"
    fd, tmp = temp_file(path.parent, ".gase-", sfx)
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
    """Write a volume (NRRD, NIfTI or MHA by extension), atomically.

    ``.nrrd`` is written by :func:`write_nrrd_streamed` (slab by slab, no copy of the voxels); the other
    formats through SimpleITK, which copies the array once into an image first.
    """
    path = Path(path)
    if not path.name.lower().endswith(IMAGE_SUFFIXES):  # the suffix only: hidden staging names are fine here
        raise OutputError(f"{path}: unsupported output type; use .nrrd, .nii.gz or .mha.")
    if path.name.lower().endswith(".nrrd"):
        return atomic_write(path, lambda tmp: write_nrrd_streamed(volume, tmp, compress=compress),
                            overwrite=overwrite)
    import SimpleITK as sitk

    image = volume_to_sitk(volume)
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), compress), overwrite=overwrite)


_NRRD_TYPES = {"u1": "unsigned char", "i1": "signed char", "u2": "unsigned short", "i2": "short",
               "u4": "unsigned int", "i4": "int", "u8": "unsigned long long int", "i8": "long long int",
               "f4": "float", "f8": "double"}


def write_nrrd_streamed(volume: Volume, path: str | os.PathLike, *, compress: bool = True,
                        slab_bytes: int = 4 * 2**20, level: int = 1) -> None:
    """Write a 3D scalar volume as an attached-header NRRD (LPS space), streaming the voxels slab by slab.

    Why not SimpleITK or pynrrd: both copy the whole array first (``GetImageFromArray``,
    ``ndarray.tobytes``), which for a 1024 x 1024 x 400 float32 confidence map is 1.6 GB on top of the
    map itself. Here the memory beyond the array is one slab (``slab_bytes``) and the compressor's buffer.
    The header holds exactly the fields SimpleITK, pynrrd and 3D Slicer read for a scalar volume (tested
    against the first two). ``compress``: gzip at ``level`` (1: fast; confidence maps compress well).
    """
    import zlib

    array = volume.array
    if array.ndim != 3:
        raise OutputError(f"{path}: NRRD output needs a 3D array, got {array.ndim}D.")
    dt = array.dtype.newbyteorder("<") if array.dtype.kind in "iuf" else None
    if array.dtype == np.bool_:
        dt = np.dtype(np.uint8)
    key = None if dt is None else f"{dt.kind}{dt.itemsize}"
    if key not in _NRRD_TYPES:
        raise OutputError(f"{path}: voxel type {array.dtype} cannot be written as NRRD.")
    rows, origin = nrrd_space_directions(volume.ijk_to_ras)

    def vec(v) -> str:
        return "(" + ",".join(format(float(x), ".17g") for x in v) + ")"

    k, j, i = array.shape
    header = ["NRRD0004", "# Complete NRRD file format specification at:",
              "# http://teem.sourceforge.net/nrrd/format.html", f"type: {_NRRD_TYPES[key]}", "dimension: 3",
              "space: left-posterior-superior", f"sizes: {i} {j} {k}",
              "space directions: " + " ".join(vec(r) for r in rows), "kinds: domain domain domain",
              "endian: little", f"encoding: {'gzip' if compress else 'raw'}", f"space origin: {vec(origin)}"]
    per_slice = max(1, j * i * dt.itemsize)
    step = max(1, slab_bytes // per_slice)
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n\n").encode("ascii"))
        comp = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS | 16) if compress else None
        for start in range(0, k, step):
            slab = np.ascontiguousarray(array[start:start + step], dtype=dt)
            data = memoryview(slab).cast("B")
            fh.write(comp.compress(data) if comp is not None else data)
        if comp is not None:
            fh.write(comp.flush())


def iter_image_files(folder: Path) -> Iterable[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))
