"""gase.volume: the one LPS<->RAS conversion, file round trips, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_oblique_ijk_to_ras
from gase.errors import GeometryError, InputError, OutputError
from gase.volume import Volume, case_name, read_volume, volume_from_sitk, volume_to_sitk, write_volume


def _vol(shape=(5, 6, 7), dtype=np.float32, seed=0, m=None):
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(size=shape).astype(dtype), make_oblique_ijk_to_ras() if m is None else m)


def test_sitk_conversion_is_ras_lps_flip():
    img = sitk.Image(7, 6, 5, sitk.sitkFloat32)
    img.SetSpacing((0.5, 0.6, 2.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    v = volume_from_sitk(img)
    # LPS identity direction -> RAS columns (-1,0,0), (0,-1,0), (0,0,1); origin x/y negated
    np.testing.assert_allclose(v.ijk_to_ras[:3, :3], np.diag([-0.5, -0.6, 2.0]))
    np.testing.assert_allclose(v.origin, [-10.0, -20.0, 30.0])
    assert v.shape == (5, 6, 7)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_file_round_trip_keeps_array_and_oblique_geometry(tmp_path, suffix):
    v = _vol()
    p = write_volume(v, tmp_path / f"a{suffix}")
    back = read_volume(p)
    np.testing.assert_array_equal(back.array, v.array)
    np.testing.assert_allclose(back.ijk_to_ras, v.ijk_to_ras, atol=1e-5)


def test_sitk_round_trip_exact():
    v = _vol(dtype=np.int16)
    back = volume_from_sitk(volume_to_sitk(v))
    np.testing.assert_array_equal(back.array, v.array)
    np.testing.assert_allclose(back.ijk_to_ras, v.ijk_to_ras, atol=1e-12)


def test_geometry_checks():
    with pytest.raises(GeometryError, match="zero axis"):
        Volume(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(GeometryError, match="not orthogonal"):
        Volume(np.zeros((2, 2, 2)), sheared)
    with pytest.raises(InputError, match="3D volume"):
        Volume(np.zeros((2, 2)), np.eye(4))


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "missing.nrrd")
    empty = tmp_path / "empty.nrrd"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_volume(empty)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        read_volume(txt)
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n" + b"\0" * 100)
    with pytest.raises(InputError, match="cannot be read"):
        read_volume(bad)


def test_write_refuses_to_overwrite_and_leaves_no_partial(tmp_path):
    v = _vol()
    p = write_volume(v, tmp_path / "a.nrrd")
    before = p.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        write_volume(_vol(seed=1), p)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["a.nrrd"]


def test_case_name():
    assert case_name("x/knee_01.nii.gz") == "knee_01"
    assert case_name("a.seg.nrrd") == "a"
    assert case_name("b.nrrd") == "b"
