"""Volumes <-> MRML volume nodes, and voxel masks -> segment labelmaps.

Geometry travels only through the node's IJK-to-RAS matrix (a :class:`gase.volume.Volume` carries the
same matrix), so a node in any orientation - oblique, flipped, permuted axes - round-trips voxel for
voxel. No LPS/RAS conversion happens here: MRML is RAS, and so is ``Volume.ijk_to_ras``.

>>> volume = volume_from_node(inputVolumeNode)           # doctest: +SKIP
>>> node = add_volume_node(scene, volume, "copy")       # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
from gase.errors import InputError
from gase.volume import Volume


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """4x4 numpy array (float64) of a vtkMatrix4x4."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras_of(node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix (its local frame, before any parent transform)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def volume_from_node(node) -> Volume:
    """A copy of a scalar volume node's voxels (K, J, I) with its IJK-to-RAS matrix.

    Raises :class:`InputError` for a missing node, a node without voxels and vector (RGB, multi-channel)
    volumes, with the fix in the message.
    """
    if node is None:
        raise InputError("No input volume is selected. Load an MR volume and select it as input.")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"Volume '{node.GetName()}' has no voxel data. Load the image again.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"Volume '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per "
                         "voxel (RGB or vector data). GASE needs a single-channel grey-scale MR volume: extract "
                         "one channel first (Vector to Scalar Volume module).")
    dims = image.GetDimensions()
    shape = (dims[2], dims[1], dims[0])
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape).copy()
    return Volume(array, ijk_to_ras_of(node))


def set_volume(node, volume: Volume) -> None:
    """Replace a volume node's voxels and IJK-to-RAS matrix with ``volume``'s (voxels are copied)."""
    array = np.ascontiguousarray(volume.array)
    if array.dtype == np.int64 or array.dtype == np.uint64:
        # VTK slice rendering does not support 64-bit integer voxels.
        array = array.astype(np.int32)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = vtk.vtkImageData()
    k, j, i = array.shape
    image.SetDimensions(i, j, k)
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                           array_type=numpy_support.get_vtk_array_type(array.dtype))
    image.GetPointData().SetScalars(vtk_array)
    was_modifying = node.StartModify()
    node.SetIJKToRASMatrix(array_to_matrix(volume.ijk_to_ras))
    node.SetAndObserveImageData(image)
    node.EndModify(was_modifying)


def add_volume_node(scene, volume: Volume, name: str, *, class_name: str = "vtkMRMLScalarVolumeNode"):
    """Add a new volume node holding ``volume`` to ``scene``, with default display nodes."""
    node = scene.AddNewNodeByClass(class_name, name)
    set_volume(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


def oriented_image(array: np.ndarray, ijk_to_ras: np.ndarray) -> "slicer.vtkOrientedImageData":
    """A uint8 ``vtkOrientedImageData`` (what segments store) from a (K, J, I) array on a given grid."""
    data = np.ascontiguousarray(array, dtype=np.uint8)
    k, j, i = data.shape
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = data.ravel()
    image.SetImageToWorldMatrix(array_to_matrix(ijk_to_ras))
    return image
