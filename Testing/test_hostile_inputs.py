"""Hostile inputs through every front end: the CLI, the Python API, training data checks, the Slicer logic.

Each case ends in a clear error or a handled result, never a traceback, a hang or a partial output; the
inputs are never modified. A CLI case asserts the exit code, the exact message the user reads on
stderr, that no "Traceback" was printed, that the output folder holds nothing it should not (no
outputs, no temporary files) and that every input file is byte-for-byte unchanged.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gase.cli import main
from gase.errors import GaseError, GeometryError, InputError, ModelError, TrainingDataError
from gase.labels import KNEE_LABELS
from gase.predictor import Predictor
from gase.training.data import check_pair, match_pairs
from gase.volume import Volume, read_volume, write_volume

NRRD_HEADER = ("NRRD0004\ntype: int16\ndimension: 3\nsizes: 14 12 10\nendian: little\nencoding: raw\n"
               "space: left-posterior-superior\nspace origin: (0,0,0)\n")
RAW = np.arange(10 * 12 * 14, dtype=np.int16).tobytes()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (see conftest.one_thread)."""


# ---------------------------------------------------------------------------------------------
# Building the hostile inputs (small, deterministic)
# ---------------------------------------------------------------------------------------------

def _knee(knee_cases) -> Volume:
    return knee_cases[4][0]


def _with_array(v: Volume, array) -> Volume:
    return Volume(np.asarray(array), v.ijk_to_ras.copy())


def _with_matrix(v: Volume, m) -> Volume:
    return Volume(v.array, np.asarray(m, dtype=np.float64))


def _dicom_series(folder: Path, n: int, series_uid: str, *, skip=(), z0: float = 0.0, tag: str = "") -> None:
    """``n`` axial 16x16 MR slices of one series (2 mm apart), as SimpleITK writes DICOM."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        if k in skip:
            continue
        image = sitk.GetImageFromArray((np.arange(256).reshape(1, 16, 16) % 97 + k).astype(np.int16))
        image.SetSpacing((0.5, 0.5, 2.0))
        image.SetOrigin((0.0, 0.0, z0 + 2.0 * k))
        for key, value in {"0020|000d": "1.2.3", "0020|000e": series_uid, "0008|0060": "MR",
                           "0020|0032": f"0\\0\\{z0 + 2.0 * k}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0020|0013": str(k + 1), "0018|0050": "2.0", "0008|0018": f"{series_uid}.{k + 1}{tag}",
                           "0028|0030": "0.5\\0.5"}.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{series_uid}{tag}_{k:03d}.dcm"))
        writer.Execute(image)


def _write(folder: Path, name: str, volume: Volume) -> Path:
    return write_volume(volume, folder / name)


def _truncate(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _oblique(v: Volume, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    m = v.ijk_to_ras.copy()
    m[:3, :3] = rot @ m[:3, :3]
    return m


def build_input(kind: str, d: Path, knee: Volume) -> Path:
    """Write the hostile input ``kind`` under ``d``; returns the path to give GASE."""
    d.mkdir(parents=True, exist_ok=True)
    arr = knee.array
    if kind == "empty_file":
        (d / "empty.nrrd").write_bytes(b"")
        return d / "empty.nrrd"
    if kind == "truncated_nrrd":
        (d / "cut.nrrd").write_bytes((NRRD_HEADER + "space directions: (1,0,0) (0,1,0) (0,0,1)\n\n").encode() + RAW[:500])
        return d / "cut.nrrd"
    if kind == "truncated_nii_gz":
        return _truncate(_write(d, "cut.nii.gz", knee))
    if kind == "truncated_nii":
        return _truncate(_write(d, "cut.nii", knee))
    if kind == "wrong_extension":
        (d / "knee.txt").write_bytes(_write(d, "tmp.nrrd", knee).read_bytes())
        (d / "tmp.nrrd").unlink()
        return d / "knee.txt"
    if kind == "nrrd_named_nifti":
        src = _write(d, "tmp.nrrd", knee)
        src.rename(d / "knee.nii.gz")
        return d / "knee.nii.gz"
    if kind == "garbage_bytes":
        (d / "noise.nrrd").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        return d / "noise.nrrd"
    if kind == "missing_data_file":
        (d / "detached.nhdr").write_text(NRRD_HEADER + "space directions: (1,0,0) (0,1,0) (0,0,1)\n"
                                         "data file: missing.raw\n")
        return d / "detached.nhdr"
    if kind == "nan_voxels":
        a = arr.copy()
        a[:, 10:30, 10:30] = np.nan
        return _write(d, "nan.nrrd", _with_array(knee, a))
    if kind == "inf_voxels":
        a = arr.copy()
        a[3, 5:40, 5:40] = np.inf
        return _write(d, "inf.nrrd", _with_array(knee, a))
    if kind == "constant_image":
        return _write(d, "constant.nrrd", _with_array(knee, np.full(arr.shape, 417.0, np.float32)))
    if kind == "all_zero_int16":
        return _write(d, "zeros.nrrd", _with_array(knee, np.zeros(arr.shape, np.int16)))
    if kind == "image_2d":
        sitk.WriteImage(sitk.GetImageFromArray(arr[5]), str(d / "slice.nrrd"))
        return d / "slice.nrrd"
    if kind == "volume_4d":
        series = [sitk.GetImageFromArray(arr * t) for t in (1.0, 0.5, 0.25)]
        sitk.WriteImage(sitk.JoinSeries(series), str(d / "dynamic.nii.gz"))
        return d / "dynamic.nii.gz"
    if kind == "rgb_volume":
        rgb = np.stack([arr, arr, arr], axis=-1).clip(0, 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(d / "rgb.nrrd"))
        return d / "rgb.nrrd"
    if kind == "complex_voxels":
        sitk.WriteImage(sitk.GetImageFromArray((arr + 1j * arr).astype(np.complex64)), str(d / "complex.nrrd"))
        return d / "complex.nrrd"
    if kind == "absurd_size_header":
        (d / "huge.nrrd").write_text("NRRD0004\ntype: int16\ndimension: 3\nsizes: 100000 100000 100000\n"
                                     "endian: little\nencoding: raw\n\n")
        return d / "huge.nrrd"
    if kind == "zero_spacing_header":
        (d / "flat.nrrd").write_bytes((NRRD_HEADER + "space directions: (0,0,0) (0,1,0) (0,0,1)\n\n").encode() + RAW)
        return d / "flat.nrrd"
    if kind == "absurd_inplane_spacing":
        m = knee.ijk_to_ras.copy()
        m[:3, :2] *= 60.0  # 105 mm pixels
        return _write(d, "coarse.nrrd", _with_matrix(knee, m))
    if kind == "sheared_direction":
        (d / "sheared.nrrd").write_bytes((NRRD_HEADER + "space directions: (1,0,0) (0.5,1,0) (0,0,1)\n\n").encode()
                                         + RAW)
        return d / "sheared.nrrd"
    if kind == "oblique_42_degrees":
        return _write(d, "oblique.nrrd", _with_matrix(knee, _oblique(knee, 42)))
    if kind == "tiny_volume":
        return _write(d, "tiny.nrrd", _with_array(knee, arr[:3, :3, :3]))
    if kind == "one_axial_slice":  # one slice, stored in another plane than the (sagittal) model's
        m = np.array([[-1.75, 0, 0, 0], [0, -1.75, 0, 0], [0, 0, 6.0, 0], [0, 0, 0, 1.0]])
        return _write(d, "axial1.nrrd", Volume(arr[:1].copy(), m))
    if kind == "dicom_missing_slice":
        _dicom_series(d / "series", 8, "1.2.826.0.1.2", skip=(4,))
        return d / "series"
    if kind == "dicom_mixed_series":
        _dicom_series(d / "series", 6, "1.2.826.0.1.3")
        _dicom_series(d / "series", 6, "1.2.826.0.1.4")
        return d / "series"
    if kind == "dicom_duplicate_slices":
        _dicom_series(d / "series", 6, "1.2.826.0.1.6")
        _dicom_series(d / "series", 6, "1.2.826.0.1.6", z0=1e-4, tag="b")
        return d / "series"
    if kind == "empty_folder":
        (d / "nothing").mkdir()
        return d / "nothing"
    if kind == "missing_file":
        return d / "does-not-exist.nrrd"
    raise KeyError(kind)


def _digest(path: Path) -> dict[str, str]:
    """SHA-256 of a file, or of every file under a folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _cli(argv, capsys) -> tuple[int, str, str]:
    """Run ``gase ...`` in-process: (exit code, stdout, the last line on stderr: what the user reads last,
    after the progress bar cleared itself)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    lines = err.replace("\r", "\n").strip().splitlines()
    return code, out, lines[-1] if lines else ""


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# (input kind, message the user reads after "gase: error: ")
CLI_INPUT_CASES = [
    ("empty_file", r"empty\.nrrd: the file is empty \(0 bytes\)\. Re-export the image\."),
    ("truncated_nrrd", r"cut\.nrrd: cannot be read as an image \(.*\)\. The file may be truncated"),
    ("truncated_nii_gz", r"cut\.nii\.gz: the file is truncated \(shorter than its header says\)"),
    ("truncated_nii", r"cut\.nii: the file is truncated \(shorter than its header says\)"),
    ("wrong_extension", r"knee\.txt: unsupported file type\. GASE reads \.nrrd"),
    ("nrrd_named_nifti", r"knee\.nii\.gz: cannot be read as an image .*not what its extension says"),
    ("garbage_bytes", r"noise\.nrrd: cannot be read as an image"),
    ("missing_data_file", r"detached\.nhdr: cannot be read as an image \(.*missing\.raw"),
    ("nan_voxels", r"The image contains \d+ NaN or infinite voxel values.*replace with 0"),
    ("inf_voxels", r"The image contains \d+ NaN or infinite voxel values"),
    ("constant_image", r"The image is constant \(every voxel has the same value\)"),
    ("all_zero_int16", r"The image is constant"),
    ("image_2d", r"slice\.nrrd: this is a 2D image; GASE segments 3D volumes"),
    ("volume_4d", r"dynamic\.nii\.gz: The image is 4D; GASE needs a 3D volume\. For a 4D series extract one"),
    ("rgb_volume", r"rgb\.nrrd: The image has 3 components per voxel \(RGB or vector data\)"),
    ("complex_voxels", r"complex\.nrrd: The image has complex-valued voxels.*magnitude"),
    ("absurd_size_header", r"huge\.nrrd: \(100000, 100000, 100000\) voxels is larger than GASE handles"),
    ("zero_spacing_header", r"flat\.nrrd: the header gives an invalid voxel spacing .*Spacing must be positive"),
    ("absurd_inplane_spacing", r"A slice of 80x80 pixels at 105x105 mm becomes \d+x\d+ pixels.*too large"),
    ("sheared_direction", r"sheared\.nrrd: The image axes are not orthogonal.*Resample Scalar Volume"),
    ("oblique_42_degrees", r"The image is 42 degrees oblique to the nearest anatomical axis; resample it"),
    ("tiny_volume", r"The slices in the model's sagittal plane are only 3x3 pixels"),
    ("one_axial_slice", r"The slices in the model's sagittal plane are only 1x80 pixels"),
    ("dicom_missing_slice", r"series: the DICOM series has a gap .*a slice is missing"),
    ("dicom_mixed_series", r"series: the folder mixes 2 DICOM series \(1\.2\.826\.0\.1\.3, 1\.2\.826\.0\.1\.4\)"),
    ("dicom_duplicate_slices", r"series: two DICOM files have the same slice position"),
    ("empty_folder", r"nothing: no DICOM series found in this folder"),
    ("missing_file", r"does-not-exist\.nrrd: no such file or folder\. Check the path\."),
]


@pytest.mark.parametrize("kind, message", CLI_INPUT_CASES, ids=[c[0] for c in CLI_INPUT_CASES])
def test_cli_refuses_hostile_input_clearly(kind, message, tmp_path, tiny_model, knee_cases, capsys):
    src = build_input(kind, tmp_path / "in", _knee(knee_cases))
    before = _digest(src)
    out = tmp_path / "out"
    code, stdout, err = _cli(["segment", src, "--model", tiny_model, "--out", out, "--device", "cpu"], capsys)
    assert code == 2, (stdout, err)
    assert err.startswith("gase: error: ") and re.search(message, err), err
    assert _leftovers(out) == []
    assert _digest(src) == before


READ_CASES = [c for c in CLI_INPUT_CASES if c[0] not in (  # these are refused later, by the predictor
    "nan_voxels", "inf_voxels", "constant_image", "all_zero_int16", "absurd_inplane_spacing", "oblique_42_degrees",
    "tiny_volume", "one_axial_slice")]


@pytest.mark.parametrize("kind, message", READ_CASES, ids=[c[0] for c in READ_CASES])
def test_read_volume_raises_the_same_message(kind, message, tmp_path, knee_cases):
    """The Python API: ``read_volume`` raises an :class:`InputError` (never another exception type)."""
    src = build_input(kind, tmp_path, _knee(knee_cases))
    before = _digest(src)
    with pytest.raises(InputError) as info:
        read_volume(src)
    assert re.search(message, str(info.value)), str(info.value)
    assert _digest(src) == before


# ---------------------------------------------------------------------------------------------
# Output side and command line
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def knee_file(tmp_path, knee_cases) -> Path:
    return _write(tmp_path / "in", "knee.nrrd", _knee(knee_cases))


def test_unwritable_output_folder(knee_file, tmp_path, tiny_model, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: let the check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if mode & os.W_OK and
                            Path(p).resolve() == locked.resolve() else real_access(p, mode, *a, **k))
    try:
        for out in (locked, locked / "new-sub-folder"):
            code, _, err = _cli(["segment", knee_file, "--model", tiny_model, "--out", out], capsys)
            assert code == 2 and re.search(r"locked.*is not writable\. Choose a folder you can write to\.", err), err
        assert _leftovers(locked) == []
    finally:
        locked.chmod(0o755)


def test_output_folder_that_is_a_file(knee_file, tmp_path, tiny_model, capsys):
    f = tmp_path / "results"
    f.write_text("not a folder")
    code, _, err = _cli(["segment", knee_file, "--model", tiny_model, "--out", f], capsys)
    assert code == 2 and "results is a file, not a folder" in err
    code, _, err = _cli(["segment", knee_file, "--model", tiny_model, "--out", f / "sub"], capsys)
    assert code == 2 and "cannot be created because" in err and "is a file" in err
    assert f.read_text() == "not a folder"


def test_existing_output_is_refused_then_replaced_with_overwrite(knee_file, tmp_path, tiny_model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "knee.seg.nrrd").write_text("an earlier result")
    code, _, err = _cli(["segment", knee_file, "--model", tiny_model, "--out", out], capsys)
    assert code == 2 and "knee.seg.nrrd already exists. Choose another output folder or pass --overwrite." in err
    assert _leftovers(out) == ["knee.seg.nrrd"] and (out / "knee.seg.nrrd").read_text() == "an earlier result"
    before = _digest(knee_file)
    code, stdout, _ = _cli(["segment", knee_file, "--model", tiny_model, "--out", out, "--overwrite"], capsys)
    assert code == 0 and "knee: " in stdout
    assert _leftovers(out) == ["knee.seg.nrrd", "knee_confidence.nrrd", "knee_report.json"]  # no temporary files
    assert _digest(knee_file) == before


def test_output_that_would_replace_the_input(tmp_path, tiny_model, knee_cases, capsys):
    folder = tmp_path / "work"
    src = _write(folder, "scan.seg.nrrd", _knee(knee_cases))  # case "scan": its output would be scan.seg.nrrd
    before = _digest(src)
    code, _, err = _cli(["segment", src, "--model", tiny_model, "--out", folder, "--overwrite"], capsys)
    assert code == 2 and "scan.seg.nrrd would replace the input of the same name. Choose another --out" in err
    assert _digest(src) == before and _leftovers(folder) == ["scan.seg.nrrd"]


def test_two_inputs_with_the_same_case_name(tmp_path, tiny_model, knee_cases, capsys):
    a = _write(tmp_path / "a", "knee.nrrd", _knee(knee_cases))
    b = _write(tmp_path / "b", "knee.nii.gz", _knee(knee_cases))
    code, _, err = _cli(["segment", a, b, "--model", tiny_model, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "Two inputs have the same case name, so their outputs would collide: knee, knee" in err
    assert _leftovers(tmp_path / "out") == []


def test_a_bad_case_among_several_names_its_file_and_keeps_earlier_complete_outputs(tmp_path, tiny_model,
                                                                                     knee_cases, capsys):
    good = _write(tmp_path / "in", "good.nrrd", _knee(knee_cases))
    bad = build_input("constant_image", tmp_path / "in", _knee(knee_cases))
    out = tmp_path / "out"
    code, _, err = _cli(["segment", good, bad, "--model", tiny_model, "--out", out], capsys)
    assert code == 2
    assert f"{bad}: The image is constant" in err and f"The outputs of the 1 case(s) before it are complete in {out}" in err
    assert _leftovers(out) == ["good.seg.nrrd", "good_confidence.nrrd", "good_report.json"]


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], r"argument --batch-size: must be at least 1, got 0"),
    (["--batch-size", "many"], r"argument --batch-size: 'many' is not a whole number"),
    (["--device", "tpu"], r"argument --device: invalid choice: 'tpu'"),
])
def test_bad_options_are_usage_errors(args, message, knee_file, tmp_path, tiny_model, capsys):
    code, _, err = _cli(["segment", knee_file, "--model", tiny_model, "--out", tmp_path / "out", *args], capsys)
    assert code == 2 and re.search(message, err), err
    assert _leftovers(tmp_path / "out") == []


def test_bad_model_folders(knee_file, tmp_path, tiny_model, capsys):
    code, _, err = _cli(["segment", knee_file, "--model", tmp_path / "nowhere", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "nowhere: no such model folder. Give the folder that holds model.json." in err
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_model, tampered, ignore=shutil.ignore_patterns("training"))
    data = bytearray((tampered / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "weights.safetensors").write_bytes(bytes(data))
    code, _, err = _cli(["segment", knee_file, "--model", tampered, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "checksum mismatch with model.json: the file was changed or damaged" in err
    assert _leftovers(tmp_path / "out") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_requested_without_a_gpu(knee_file, tmp_path, tiny_model, capsys):
    code, _, err = _cli(["segment", knee_file, "--model", tiny_model, "--out", tmp_path / "out", "--device", "cuda"],
                        capsys)
    assert code == 2 and "CUDA was requested but no CUDA GPU is available to PyTorch. Use --device cpu" in err


# ---------------------------------------------------------------------------------------------
# Inputs that are unusual but valid: a handled result, in the input's own geometry
# ---------------------------------------------------------------------------------------------

def _handled(kind: str, d: Path, knee: Volume) -> Path:
    if kind == "one_sagittal_slice":  # one slice in the model's own plane: segmentable
        return _write(d, "one.nrrd", Volume(knee.array[:1].copy(), knee.ijk_to_ras.copy()))
    if kind == "thick_slices_50mm":
        m = knee.ijk_to_ras.copy()
        m[:3, 2] *= 50.0 / 6.0
        return _write(d, "thick.nrrd", Volume(knee.array, m))
    if kind == "negative_spacing_mha":  # MetaImage with a negative spacing: ITK reads it as a flipped axis
        raw = np.ascontiguousarray(knee.array.astype(np.int16))
        k, j, i = raw.shape
        (d / "neg.mha").parent.mkdir(parents=True, exist_ok=True)
        (d / "neg.mha").write_bytes((f"ObjectType = Image\nNDims = 3\nDimSize = {i} {j} {k}\nElementSpacing = -1.75 1.75 6"
                                     "\nElementType = MET_SHORT\nElementDataFile = LOCAL\n").encode() + raw.tobytes())
        return d / "neg.mha"
    if kind == "uint16_nifti":
        a = np.clip(knee.array * (3000.0 / knee.array.max()), 0, 65535).astype(np.uint16)
        return _write(d, "u16.nii.gz", Volume(a, knee.ijk_to_ras.copy()))
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["one_sagittal_slice", "thick_slices_50mm", "negative_spacing_mha", "uint16_nifti"])
def test_unusual_but_valid_inputs_are_segmented(kind, tmp_path, tiny_model, knee_cases, capsys):
    src = _handled(kind, tmp_path / "in", _knee(knee_cases))
    before = _digest(src)
    out = tmp_path / "out"
    code, stdout, err = _cli(["segment", src, "--model", tiny_model, "--out", out, "--device", "cpu"], capsys)
    assert code == 0, err
    case = src.name.split(".")[0]
    assert re.search(rf"{case}: (VALID|NOT VALID \(outside the model's competence\))  score", stdout), stdout
    assert _leftovers(out) == sorted([f"{case}.seg.nrrd", f"{case}_confidence.nrrd", f"{case}_report.json"])
    image, conf = read_volume(src), read_volume(out / f"{case}_confidence.nrrd")
    assert conf.shape == image.shape and np.allclose(conf.ijk_to_ras, image.ijk_to_ras, atol=1e-3)
    assert _digest(src) == before


# ---------------------------------------------------------------------------------------------
# Python API: Volume and Predictor.predict on hostile arrays and matrices
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor.from_folder(tiny_model, device="cpu")


@pytest.mark.parametrize("make, error, message", [
    (lambda v: Volume(v.array[0], v.ijk_to_ras), InputError, r"Expected a 3D volume, got an array of 2 dimension"),
    (lambda v: Volume(v.array[..., None].repeat(2, -1), v.ijk_to_ras), InputError, r"split 4D/RGB data first"),
    (lambda v: Volume(v.array, v.ijk_to_ras @ np.diag([1.0, 0.0, 1.0, 1.0])), GeometryError, r"has a zero axis"),
    (lambda v: Volume(v.array, np.where(np.eye(4) == 1, np.nan, v.ijk_to_ras)), GeometryError, r"NaN or infinite"),
    (lambda v: Volume(v.array, v.ijk_to_ras[:3]), GeometryError, r"must be a 4x4 matrix"),
    (lambda v: Volume(v.array, v.ijk_to_ras + np.eye(4, k=1) * 0.7), GeometryError, r"not orthogonal"),
], ids=["2d_array", "4d_array", "zero_spacing", "nan_matrix", "3x4_matrix", "sheared_matrix"])
def test_volume_refuses_unusable_arrays_and_geometry(make, error, message, knee_cases):
    with pytest.raises(error, match=message):
        make(_knee(knee_cases))


@pytest.mark.parametrize("array, message", [
    (lambda a: np.zeros((0,) + a.shape[1:], np.float32), r"The volume is empty"),
    (lambda a: a.astype(np.complex64), r"Voxel type complex64 is not a real number"),
    (lambda a: a.astype(object), r"Voxel type object is not a real number"),
    (lambda a: np.where(np.arange(a.size).reshape(a.shape) % 5 == 0, -np.inf, a).astype(np.float32),
     r"NaN or infinite"),
    (lambda a: np.full(a.shape, -3.0, np.float64), r"constant"),
], ids=["zero_slices", "complex", "object", "minus_inf", "constant_float64"])
def test_predict_refuses_unusable_voxels(array, message, predictor, knee_cases):
    knee = _knee(knee_cases)
    arr = array(knee.array)
    vol = Volume(arr, knee.ijk_to_ras)
    before = arr.copy()
    with pytest.raises(InputError, match=message):
        predictor.predict(vol)
    if arr.dtype != object:
        np.testing.assert_array_equal(arr, before)


def test_predict_never_modifies_its_input(predictor, knee_cases):
    knee = _knee(knee_cases)
    arr = knee.array.copy()
    m = knee.ijk_to_ras.copy()
    predictor.predict(Volume(arr, m))
    np.testing.assert_array_equal(arr, knee.array)
    np.testing.assert_array_equal(m, knee.ijk_to_ras)


# ---------------------------------------------------------------------------------------------
# Training data: labels with unknown values or another geometry, unmatched files
# ---------------------------------------------------------------------------------------------

def _shift(mm: float) -> np.ndarray:
    """A 4x4 that moves a matrix's origin ``mm`` along R when added to it."""
    s = np.zeros((4, 4))
    s[0, 3] = mm
    return s


@pytest.mark.parametrize("mutate, message", [
    (lambda img, lab: (img, Volume(np.where(lab.array == 1, 9, lab.array).astype(np.uint8), lab.ijk_to_ras)),
     r"label values \[9\] are not in the label table \(1=femur"),
    (lambda img, lab: (img, Volume(lab.array, lab.ijk_to_ras + _shift(5.0))),
     r"different geometry \(origin, spacing or direction\)\. Resample the label map onto the image grid"),
    (lambda img, lab: (img, Volume(lab.array[:, :-1], lab.ijk_to_ras)), r"image shape .* and label shape .* differ"),
    (lambda img, lab: (img, Volume(lab.array.astype(np.float32) + 0.5, lab.ijk_to_ras)),
     r"the label map has non-integer values"),
    (lambda img, lab: (img, Volume(np.zeros_like(lab.array), lab.ijk_to_ras)), r"the label map is empty"),
], ids=["unknown_label_value", "other_geometry", "other_shape", "non_integer_labels", "empty_labels"])
def test_training_pairs_are_checked(mutate, message, knee_cases):
    img, lab = mutate(*knee_cases[0])
    before = lab.array.copy()
    with pytest.raises(TrainingDataError, match=message):
        check_pair(img, lab, KNEE_LABELS, "case0")
    np.testing.assert_array_equal(lab.array, before)


def test_training_cli_refuses_unknown_labels_and_unmatched_files(tmp_path, knee_cases, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    for n in range(2):
        img, lab = knee_cases[n]
        _write(images, f"c{n}.nrrd", img)
        bad = lab.array.astype(np.uint8)
        if n == 1:
            bad[bad == 2] = 7
        _write(labels, f"c{n}.nrrd", Volume(bad, lab.ijk_to_ras))
    before = {**_digest(images), **_digest(labels)}
    code, _, err = _cli(["train", "--images", images, "--labels", labels, "--out", tmp_path / "model"], capsys)
    assert code == 2 and re.search(r"c1: label values \[7\] are not in the label table", err), err
    assert {**_digest(images), **_digest(labels)} == before
    (labels / "c1.nrrd").unlink()
    code, _, err = _cli(["train", "--images", images, "--labels", labels, "--out", tmp_path / "model"], capsys)
    assert code == 2 and "No label file for image(s) c1: every image in" in err
    assert not (tmp_path / "model" / "model.json").exists()
    (tmp_path / "no-images").mkdir()
    with pytest.raises(TrainingDataError, match="no image files"):
        match_pairs(tmp_path / "no-images", labels)


# ---------------------------------------------------------------------------------------------
# The Slicer logic on real MRML nodes
# ---------------------------------------------------------------------------------------------

def _volume_node(scene, volume: Volume, name: str = "input"):
    from GASESegmentationLib.nodes import add_volume_node

    return add_volume_node(scene, volume, name)


def _vector_node(scene):
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(image)
    return node


def _sheared_node(scene, knee):
    node = _volume_node(scene, knee, "sheared")
    from GASESegmentationLib.nodes import array_to_matrix

    m = knee.ijk_to_ras.copy()
    m[:3, 0] += 0.5 * m[:3, 1]
    node.SetIJKToRASMatrix(array_to_matrix(m))
    return node


def _zero_spacing_node(scene, knee):
    node = _volume_node(scene, knee, "flat")
    node.SetSpacing(0.0, 1.0, 1.0)
    return node


@pytest.mark.parametrize("make, message", [
    (lambda scene, knee: None, r"No input volume is selected\. Load an MR volume and select it as input\."),
    (lambda scene, knee: scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "blank"),
     r"Volume 'blank' has no voxel data\. Load the image again\."),
    (lambda scene, knee: _vector_node(scene), r"Volume 'rgb' has 3 components per voxel.*Vector to Scalar Volume"),
    (_sheared_node, r"The image axes are not orthogonal"),
    (_zero_spacing_node, r"Voxel spacing .* has a zero axis\. Set a positive spacing"),
], ids=["no_node", "node_without_voxels", "rgb_node", "sheared_node", "zero_spacing_node"])
def test_slicer_logic_refuses_unusable_nodes(make, message, mrml_scene, tiny_model, knee_cases):
    from GASESegmentationLib.logic import GASESegmentationLogic

    node = make(mrml_scene, _knee(knee_cases))
    count = mrml_scene.GetNumberOfNodes()
    with pytest.raises(GaseError, match=message):
        GASESegmentationLogic().process(node, tiny_model, device="cpu", show=False, timeout_s=60)
    assert mrml_scene.GetNumberOfNodes() == count


def test_slicer_logic_reports_the_background_error_and_changes_nothing(mrml_scene, tiny_model, knee_cases, tmp_path):
    """A NaN volume goes all the way to the background process; its message comes back as the error."""
    from GASESegmentationLib.logic import GASESegmentationLogic
    from GASESegmentationLib.nodes import volume_from_node

    knee = _knee(knee_cases)
    a = knee.array.copy()
    a[:, 20:40, 20:40] = np.nan
    node = _volume_node(mrml_scene, Volume(a, knee.ijk_to_ras))
    logic = GASESegmentationLogic()
    with pytest.raises(ModelError, match=r"no such model folder"):
        logic.process(node, tmp_path / "no-model", device="cpu", show=False)
    count = mrml_scene.GetNumberOfNodes()
    with pytest.raises(GaseError, match=r"The image contains \d+ NaN or infinite voxel values"):
        logic.process(node, tiny_model, device="cpu", show=False, timeout_s=120)
    assert mrml_scene.GetNumberOfNodes() == count
    np.testing.assert_array_equal(volume_from_node(node).array, a)
