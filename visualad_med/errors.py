"""The one error type that names the setting to change, so that every front-end can say it in its own words."""

from __future__ import annotations


class SettingError(ValueError):
    """A setting that cannot work.

    ``setting`` is the library's name of it (``image_size``, ``taps``, ``planes``, ``window``,
    ``batch_size``, ``scoring``, ``map_reference``, ``input``, ``output``, ``synthetic``,
    ``augment``); the command line turns it into a flag, the bundle into a config key. The message says what is wrong, in no front-end's words.
    """

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting
