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


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16, np.uint16, np.int32, ">i2", bool])
@pytest.mark.parametrize("compress", [True, False])
def test_streamed_nrrd_reads_back_in_simpleitk_and_pynrrd(tmp_path, dtype, compress):
    import nrrd

    rng = np.random.default_rng(3)
    array = (rng.normal(size=(9, 6, 7)) * 50).astype(dtype)
    v = Volume(array, make_oblique_ijk_to_ras())
    # slabs of one slice: the loop over slabs, not one write, is what is exercised
    from gase.volume import atomic_write, write_nrrd_streamed
    p = atomic_write(tmp_path / "s.nrrd", lambda t: write_nrrd_streamed(v, t, compress=compress, slab_bytes=1))
    back = read_volume(p)  # SimpleITK
    np.testing.assert_array_equal(back.array, array.astype(back.array.dtype))
    np.testing.assert_allclose(back.ijk_to_ras, v.ijk_to_ras, atol=1e-9)
    data, header = nrrd.read(str(p), index_order="C")
    np.testing.assert_array_equal(data, array)
    assert header["space"] == "left-posterior-superior" and header["encoding"] == ("gzip" if compress else "raw")


def test_streamed_nrrd_does_not_copy_the_whole_array(tmp_path):
    """A confidence map of a 1024 x 1024 x 400 scan is 1.6 GB: writing it must not double it."""
    import tracemalloc

    v = Volume(np.random.default_rng(0).random((128, 256, 256), dtype=np.float32), make_oblique_ijk_to_ras())
    tracemalloc.start()
    try:
        write_volume(v, tmp_path / "conf.nrrd")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert v.array.nbytes == 32 * 2**20
    assert peak < 0.5 * v.array.nbytes, f"peak {peak / 2**20:.1f} MiB while writing a 32 MiB array"
    np.testing.assert_array_equal(read_volume(tmp_path / "conf.nrrd").array, v.array)


def test_streamed_nrrd_refuses_what_it_cannot_write(tmp_path):
    from gase.volume import write_nrrd_streamed

    with pytest.raises(OutputError, match="complex"):
        write_nrrd_streamed(Volume(np.zeros((2, 3, 4), np.complex64), make_oblique_ijk_to_ras()), tmp_path / "c.nrrd")
