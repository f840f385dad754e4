"""GASE: style-based adversarial MR segmentation with per-voxel confidence and input validity.

The core never imports Slicer or Qt. Entry points: :class:`gase.predictor.Predictor` (volume ->
:class:`gase.result.SegmentationResult`), :func:`gase.training.loop.train`, the ``gase`` CLI.
"""
__version__ = "0.1.0"
