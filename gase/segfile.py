"""Slicer's segmentation file (``.seg.nrrd``): a label map plus named, coloured segments with terminology.

The file is a NRRD with an LPS header (as Slicer writes it) and ``Segment<N>_*`` key/value fields that
3D Slicer reads as segments: ID, name, colour, label value, layer, extent and tags (the
``TerminologyEntry`` with SNOMED-CT codes from :meth:`gase.labels.LabelInfo.terminology_string`).
Field meanings follow Slicer's developer guide, "Segmentation labelmap file format (.seg.nrrd)".

>>> import numpy as np, tempfile, os
>>> from gase.labels import KNEE_LABELS
>>> from gase.volume import Volume
>>> labels = Volume(np.zeros((2, 3, 4), np.uint8), np.diag([0.5, 0.5, 2.0, 1.0]))
>>> labels.array[1, 1, 1:3] = 1
>>> path = write_seg_nrrd(labels, KNEE_LABELS, os.path.join(tempfile.mkdtemp(), "case.seg.nrrd"))
>>> back, table = read_seg_nrrd(path)
>>> int(back.array.sum()), [lab.name for lab in table][:2]
(2, ['femur', 'femoral cartilage'])
"""
from __future__ import annotations

import colorsys
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError, OutputError
from .labels import ANATOMICAL_STRUCTURE, LabelInfo
from .volume import Volume, _lps_to_ras_matrix, atomic_write, make_ijk_to_ras, nrrd_space_directions

TERMINOLOGY_TAG = "TerminologyEntry"
BINARY_LABELMAP = "Binary labelmap"
_DEFAULT_TYPE = ("SCT", "91723000", "Anatomical structure")
_LPS_SPACES = ("left-posterior-superior", "LPS")
_RAS_SPACES = ("right-anterior-superior", "RAS")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def write_seg_nrrd(labels: Volume, label_table: Sequence[LabelInfo], path: str | os.PathLike, *,
                   overwrite: bool = False) -> Path:
    """Write a label map (K, J, I) of ``LabelInfo.value`` voxels as a Slicer ``.seg.nrrd``, atomically.

    Every entry of ``label_table`` becomes a segment (absent structures as empty segments), in table
    order, on one layer, with its name, colour, label value and ``TerminologyEntry`` tag. Voxel values
    not in the table raise :class:`InputError`.
    """
    import nrrd

    path = Path(path)
    if not path.name.lower().endswith(".nrrd"):
        raise OutputError(f"{path}: a segmentation file must end in .seg.nrrd.")
    array = _checked_label_array(labels.array, label_table)
    header = _geometry_header(labels.ijk_to_ras)
    header.update(_segmentation_fields(labels, label_table))
    for n, lab in enumerate(label_table):
        header.update(_segment_fields(n, lab, array))

    def write(tmp: Path) -> None:
        nrrd.write(str(tmp), np.ascontiguousarray(array), header, index_order="C", compression_level=1)

    return atomic_write(path, write, overwrite=overwrite, suffix=".seg.nrrd")


def _checked_label_array(array: np.ndarray, label_table: Sequence[LabelInfo]) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise InputError("The label map holds non-integer values; a segmentation needs integer labels.")
    values = [lab.value for lab in label_table]
    if len(set(values)) != len(values):
        raise InputError(f"Label values {values} repeat; each segment needs its own value.")
    present = np.unique(array)
    unknown = sorted(int(v) for v in present if v != 0 and int(v) not in values)
    if unknown:
        raise InputError(f"The label map holds values {unknown} that the label table does not name "
                         f"(known: {sorted(values)}). Pass the model's full label table.")
    return array.astype(np.uint8, copy=False)


def _geometry_header(ijk_to_ras: np.ndarray) -> dict:
    rows, origin = nrrd_space_directions(ijk_to_ras)
    return {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "space directions": rows,
        "space origin": origin,
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }


def reference_geometry_string(ijk_to_ras: np.ndarray, shape_kji: Sequence[int]) -> str:
    """Slicer's serialised reference image geometry: IJK-to-RAS row by row, then the i, j, k extent."""
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    k, j, i = (int(s) for s in shape_kji)
    values = [repr(float(x)) for x in m.ravel()] + ["0", str(i - 1), "0", str(j - 1), "0", str(k - 1)]
    return ";".join(values) + ";"


def _segmentation_fields(labels: Volume, label_table: Sequence[LabelInfo]) -> dict:
    geometry = reference_geometry_string(labels.ijk_to_ras, labels.shape)
    return {
        "Segmentation_MasterRepresentation": BINARY_LABELMAP,
        "Segmentation_ContainedRepresentationNames": BINARY_LABELMAP + "|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        # The reference geometry lets Slicer's Segment Editor edit on the input's exact voxel grid.
        "Segmentation_ConversionParameters":
            f"Reference image geometry|{geometry}|Image geometry of the labelmap (written by GASE).&",
    }


def segment_id(lab: LabelInfo) -> str:
    """Stable segment ID of a structure: its name in lower case with ``_`` for other characters."""
    slug = re.sub(r"[^0-9a-z]+", "_", lab.name.lower()).strip("_")
    return slug or f"label_{lab.value}"


def _one_line(text: str) -> str:
    # NRRD header fields end at a newline; '|' separates tags in Slicer's Tags field.
    return " ".join(str(text).split())


def _segment_fields(n: int, lab: LabelInfo, array: np.ndarray) -> dict:
    prefix = f"Segment{n}_"
    return {
        prefix + "ID": segment_id(lab),
        prefix + "Name": _one_line(lab.name),
        prefix + "NameAutoGenerated": "0",
        prefix + "Color": " ".join(f"{float(c):.6g}" for c in lab.color),
        prefix + "ColorAutoGenerated": "0",
        prefix + "LabelValue": str(int(lab.value)),
        prefix + "Layer": "0",
        prefix + "Extent": _extent_string(array == lab.value),
        prefix + "Tags": f"{TERMINOLOGY_TAG}:{_one_line(lab.terminology_string()).replace('|', ' ')}|",
    }


def _extent_string(mask: np.ndarray) -> str:
    """``i0 i1 j0 j1 k0 k1`` of the non-empty region; ``0 -1 0 -1 0 -1`` for an empty segment."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in (2, 1, 0):  # i, j, k from the [k, j, i] array
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        bounds += [int(idx[0]), int(idx[-1])]
    return " ".join(str(b) for b in bounds)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def read_seg_nrrd(path: str | os.PathLike) -> tuple[Volume, tuple[LabelInfo, ...]]:
    """Read a ``.seg.nrrd`` (GASE's or Slicer's) into a uint8 label map and its label table.

    Segments keep their ``LabelValue`` as voxel value when those are unique, else they are numbered
    1..N in file order. Multi-layer files (overlapping segments in Slicer) are merged; a voxel in two
    segments raises :class:`InputError`, since one label map cannot hold overlaps. Slicer saves a
    labelmap cropped to its segments; it comes back on the reference image grid named in the file
    when the crop lies on that grid, else with the cropped extent (its origin places it correctly).
    """
    import nrrd

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such segmentation file.")
    try:
        data, header = nrrd.read(str(p), index_order="C")
    except (nrrd.NRRDError, OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot be read as a NRRD segmentation ({exc}). Re-export it from Slicer.") from None
    segments = _segment_entries(header)
    if not segments:
        raise InputError(f"{p}: the file has no Segment0_ID field; it is a plain image, not a Slicer "
                         "segmentation. Load it as a label map volume instead.")
    layers, ijk_to_ras = _layers_and_geometry(p, data, header)
    layers, ijk_to_ras = _pad_to_reference(layers, ijk_to_ras, header)
    values = [s["label_value"] for s in segments]
    keep_values = len(set(values)) == len(values) and all(1 <= v <= 255 for v in values)
    if len(segments) > 255:
        raise InputError(f"{p}: {len(segments)} segments do not fit a uint8 label map (255 at most).")
    out = np.zeros(layers.shape[1:], np.uint8)
    claimed = np.zeros(layers.shape[1:], bool)
    table = []
    for n, seg in enumerate(segments):
        layer = seg["layer"]
        if not 0 <= layer < layers.shape[0]:
            raise InputError(f"{p}: segment {seg['id']!r} names layer {layer}, but the file has "
                             f"{layers.shape[0]} layer(s). The file is damaged; re-export it.")
        mask = layers[layer] == seg["label_value"]
        if np.any(mask & claimed):
            raise InputError(f"{p}: segment {seg['name']!r} overlaps another segment; a label map cannot hold "
                             "overlapping segments. Remove the overlap in Slicer's Segment Editor first.")
        value = seg["label_value"] if keep_values else n + 1
        out[mask] = value
        claimed |= mask
        category, typ = seg["terminology"]
        table.append(LabelInfo(value, seg["name"], seg["color"], category, typ))
    return Volume(out, ijk_to_ras), tuple(table)


def _layers_and_geometry(p: Path, data: np.ndarray, header: dict) -> tuple[np.ndarray, np.ndarray]:
    """(L, K, J, I) integer layers and the 4x4 IJK-to-RAS matrix of a segmentation NRRD."""
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * data.ndim)]
    domain_axes = [a for a, k in enumerate(kinds) if k in ("domain", "space")]  # file (F) order
    if len(domain_axes) != 3 or data.ndim not in (3, 4):
        raise InputError(f"{p}: a segmentation has 3 spatial axes (plus an optional layer axis); this file "
                         f"has kinds {kinds}.")
    if data.ndim == 3:
        layers = data[None]
    else:
        layer_axis_c = data.ndim - 1 - next(a for a in range(4) if a not in domain_axes)
        layers = np.moveaxis(data, layer_axis_c, 0)
    if np.issubdtype(layers.dtype, np.floating):
        layers = np.round(layers)
    layers = layers.astype(np.int32, copy=False)

    space = header.get("space")
    if space not in _LPS_SPACES + _RAS_SPACES:
        raise InputError(f"{p}: unsupported NRRD space {space!r}; Slicer writes 'left-posterior-superior'.")
    rows = np.asarray(header["space directions"], dtype=np.float64)
    rows = rows[[a for a in range(rows.shape[0]) if np.all(np.isfinite(rows[a]))]]
    if rows.shape != (3, 3):
        raise InputError(f"{p}: the NRRD 'space directions' do not describe three spatial axes.")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    spacing = np.linalg.norm(rows, axis=1)
    if np.any(spacing <= 0):
        raise InputError(f"{p}: a spatial axis has zero length in 'space directions'.")
    direction = (rows / spacing[:, None]).T  # columns = axis directions
    if space in _LPS_SPACES:
        return layers, _lps_to_ras_matrix(spacing, direction.ravel(), origin)
    return layers, make_ijk_to_ras(spacing, direction, origin)


def _pad_to_reference(layers: np.ndarray, ijk_to_ras: np.ndarray, header: dict) -> tuple[np.ndarray, np.ndarray]:
    """Slicer crops a saved labelmap to the segments' extent; put it back on the reference image grid
    (stored in the conversion parameters) when that grid is the same lattice. Otherwise keep the crop."""
    reference = _reference_geometry(str(header.get("Segmentation_ConversionParameters", "")))
    if reference is None:
        return layers, ijk_to_ras
    ref_matrix, ref_extent = reference
    if not np.allclose(ref_matrix[:3, :3], ijk_to_ras[:3, :3], atol=1e-6):
        return layers, ijk_to_ras
    offset_ijk = np.linalg.solve(ref_matrix[:3, :3], ijk_to_ras[:3, 3] - ref_matrix[:3, 3]) - ref_extent[0::2]
    if not np.allclose(offset_ijk, np.round(offset_ijk), atol=1e-3):
        return layers, ijk_to_ras
    oi, oj, ok = (int(round(x)) for x in offset_ijk)
    size_i, size_j, size_k = (int(ref_extent[2 * a + 1] - ref_extent[2 * a] + 1) for a in range(3))
    n, k, j, i = layers.shape
    if min(oi, oj, ok) < 0 or oi + i > size_i or oj + j > size_j or ok + k > size_k:
        return layers, ijk_to_ras  # segments reach beyond the reference grid: keep all of them
    full = np.zeros((n, size_k, size_j, size_i), layers.dtype)
    full[:, ok:ok + k, oj:oj + j, oi:oi + i] = layers
    grid = ref_matrix.copy()
    grid[:3, 3] = ref_matrix[:3, :3] @ ref_extent[0::2] + ref_matrix[:3, 3]
    return full, grid


def _reference_geometry(conversion_parameters: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(IJK-to-RAS 4x4, extent [i0, i1, j0, j1, k0, k1]) of Slicer's "Reference image geometry" parameter."""
    for item in conversion_parameters.split("&"):
        fields = item.split("|")
        if len(fields) >= 2 and fields[0] == "Reference image geometry":
            try:
                values = [float(x) for x in fields[1].split(";") if x.strip()]
            except ValueError:
                return None
            if len(values) != 22:
                return None
            matrix = np.asarray(values[:16]).reshape(4, 4)
            extent = np.asarray(values[16:], dtype=np.float64)
            if np.any(extent[1::2] < extent[0::2]) or not np.all(np.isfinite(matrix)):
                return None
            return matrix, extent
    return None


def _segment_entries(header: dict) -> list[dict]:
    entries = []
    n = 0
    while f"Segment{n}_ID" in header:
        prefix = f"Segment{n}_"
        seg_id = str(header[prefix + "ID"])
        name = str(header.get(prefix + "Name", "")).strip() or seg_id
        entries.append({
            "id": seg_id,
            "name": name,
            "color": _parse_color(header.get(prefix + "Color"), n),
            "label_value": _parse_int(header.get(prefix + "LabelValue"), 1),
            "layer": _parse_int(header.get(prefix + "Layer"), n),
            "terminology": parse_terminology(_tags(header.get(prefix + "Tags", "")).get(TERMINOLOGY_TAG, "")),
        })
        n += 1
    return entries


def _parse_int(value, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def _parse_color(value, n: int) -> tuple[float, float, float]:
    try:
        rgb = tuple(min(1.0, max(0.0, float(x))) for x in str(value).split())
        if len(rgb) == 3:
            return rgb  # type: ignore[return-value]
    except (TypeError, ValueError):
        pass
    golden = (n * 0.618034) % 1.0  # distinct fallback hues for segments without a colour
    return tuple(float(c) for c in colorsys.hsv_to_rgb(golden, 0.6, 0.9))  # type: ignore[return-value]


def _tags(text: str) -> dict[str, str]:
    tags = {}
    for item in str(text).split("|"):
        if ":" in item:
            key, value = item.split(":", 1)
            tags[key.strip()] = value
    return tags


def parse_terminology(entry: str) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """(category, type) SNOMED triplets of a Slicer ``TerminologyEntry``; defaults when absent or malformed.

    >>> parse_terminology("ctx~SCT^123037004^Anatomical Structure~SCT^71341001^Femur~^^~ctx2~^^~^^")[1]
    ('SCT', '71341001', 'Femur')
    """
    parts = str(entry).split("~")
    if len(parts) >= 3:
        category, typ = (tuple(part.split("^")) for part in parts[1:3])
        if len(category) == 3 and len(typ) == 3 and category[1] and typ[1]:
            return category, typ  # type: ignore[return-value]
    return ANATOMICAL_STRUCTURE, _DEFAULT_TYPE
