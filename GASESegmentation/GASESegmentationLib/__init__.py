"""Qt-free logic of the GASE Segmentation module: MRML nodes in, MRML nodes out, calling the ``gase`` core.

Each file has one job: ``nodes`` (volumes <-> MRML), ``results`` (output nodes and their ownership),
``tables`` (reliability table, per-slice plot), ``review`` (low-confidence regions), ``views`` (slice
view layers and navigation), ``verdict`` (validity wording), ``process`` (the background segmentation
process), ``outputs`` (its files -> a result), ``install`` (first-use dependencies), ``render``
(offscreen slice views to PNG), ``manifold`` (the style-manifold picture) and ``logic`` (the entry
point, :class:`GASESegmentationLogic`).
"""


def __getattr__(name):
    # Lazy, so that ``GASESegmentationLib.install`` imports before the extension's dependencies exist.
    if name in ("GASESegmentationLogic", "SegmentationOutputs"):
        from . import logic

        return getattr(logic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
