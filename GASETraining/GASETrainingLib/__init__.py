"""Qt-free logic of the GASE Training module: training pairs from the scene, a background ``gase train``.

Each file has one job: ``export`` (scene and folders -> a training set on disk), ``job`` (the background
training process: start, poll, stop, resume), ``progress`` (loss and Dice curves as MRML plot nodes),
``preview`` (the style-interpolation preview PNG), ``registry`` (a trained model -> the user's models
folder) and ``logic`` (the entry point, :class:`GASETrainingLogic`). The process machinery is the GASE
Segmentation module's (``GASESegmentationLib.process``), which must be importable.
"""


def __getattr__(name):
    # Lazy, so that importing the package does not import slicer/torch before the extension's dependencies exist.
    if name in ("GASETrainingLogic", "TrainingRun"):
        from . import logic

        return getattr(logic, name)
    if name in ("TrainingPair", "TrainingSet"):
        from . import export

        return getattr(export, name)
    if name in ("TrainingSettings", "TrainingProcess"):
        from . import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
