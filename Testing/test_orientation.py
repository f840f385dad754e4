"""gase.orientation: any stored orientation maps to the same canonical slices and back exactly."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from gase.errors import GeometryError
from gase.orientation import plane_of_slices, reorientation_for
from gase.volume import Volume, make_ijk_to_ras


def _restore(vol: Volume, perm, flips) -> Volume:
    """The same world content stored with array axes permuted/flipped (geometry updated to match)."""
    arr = vol.array
    m = vol.ijk_to_ras.copy()
    # array axes [k, j, i] <-> voxel axes [2, 1, 0]
    new = np.transpose(arr, perm)
    vox_perm = [2 - perm[2 - n] for n in range(3)]  # new voxel axis n comes from old voxel axis
    cols = m[:3, :3][:, vox_perm]
    origin = m[:3, 3].copy()
    for n, f in enumerate(flips):  # flip array axis n
        if f:
            new = np.flip(new, axis=n)
            vox = 2 - n
            origin = origin + cols[:, vox] * (new.shape[n] - 1)
            cols[:, vox] = -cols[:, vox]
    out = np.eye(4)
    out[:3, :3] = cols
    out[:3, 3] = origin
    return Volume(np.ascontiguousarray(new), out)


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_every_storage_order_gives_the_same_canonical_slices(plane):
    rng = np.random.default_rng(0)
    base = Volume(rng.normal(size=(4, 5, 6)).astype(np.float32),
                  make_ijk_to_ras((0.8, 0.9, 2.5), np.eye(3), (1.0, 2.0, 3.0)))
    ref = reorientation_for(base, plane).forward(base.array)
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product([False, True], repeat=3):
            v = _restore(base, perm, flips)
            # world position of voxel 0 of each must be a voxel of base (sanity of the helper)
            reo = reorientation_for(v, plane)
            np.testing.assert_array_equal(reo.forward(v.array), ref)
            np.testing.assert_allclose(sorted(reo.spacing), sorted(base.spacing))
            # and back exactly
            np.testing.assert_array_equal(reo.backward(reo.forward(v.array)), v.array)


def test_mildly_oblique_uses_nearest_axes_and_strong_oblique_is_refused():
    a = np.radians(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    v = Volume(np.zeros((3, 4, 5), np.float32), make_ijk_to_ras((1, 1, 1), rot))
    reo = reorientation_for(v, "axial")
    assert reo.forward(v.array).shape == (3, 4, 5)
    a = np.radians(42.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    with pytest.raises(GeometryError, match="oblique"):
        reorientation_for(Volume(np.zeros((3, 4, 5)), make_ijk_to_ras((1, 1, 1), rot)), "axial")


def test_canonical_layout_anatomy():
    # RAS-aligned volume: i -> R, j -> A, k -> S
    arr = np.zeros((4, 5, 6), np.float32)
    arr[3, 0, 0] = 1  # most superior slice, posterior-most... j=0 is most posterior? no: j grows to A
    v = Volume(arr, np.eye(4))
    ax = reorientation_for(v, "axial").forward(arr)
    # axial: slice index grows to S -> slice 3 is the superior one; rows A->P: j=0 (posterior) is the last row;
    # columns R->L: i=0 (left-most, since i grows to R) is the last column
    assert ax[3, -1, -1] == 1
    assert plane_of_slices(v) == "axial"
