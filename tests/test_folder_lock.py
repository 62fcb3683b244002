"""The output folder's lock: the ranks of one ``torchrun`` run share it, any other run is refused, naming the holder.

``flock`` locks belong to open files, not processes, so two holders in one process contend as two
processes would.
"""

from __future__ import annotations

import os
import re
import sys

import pytest

from visualad_med.errors import SettingError
from visualad_med.io.folder_lock import LOCK_NAME, lock_output_folder


def test_ranks_of_one_run_share_the_folder_and_a_plain_run_is_refused(tmp_path):
    with (lock_output_folder(tmp_path, 0, 2), lock_output_folder(tmp_path, 1, 2),
          pytest.raises(SettingError, match="in use by another run .a process that wrote no name, e.g. a torchrun"),
          lock_output_folder(tmp_path)):
        pass
    with lock_output_folder(tmp_path):  # the ranks are done
        pass


def test_a_rank_is_refused_while_a_plain_run_holds_the_folder_and_is_told_who(tmp_path):
    with lock_output_folder(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"pid {os.getpid()}: {' '.join(sys.argv)}\n"
        refused = pytest.raises(SettingError, match=f"in use by another run .pid {os.getpid()}: ")
        with refused, lock_output_folder(tmp_path, 1, 2):
            pass
    assert not list(tmp_path.iterdir())  # the holder removed its lock file


def test_the_same_rank_of_a_second_distributed_run_is_refused(tmp_path):
    with (lock_output_folder(tmp_path, 1, 2),
          pytest.raises(SettingError, match=re.escape(f"output folder {tmp_path} is in use by another run")),
          lock_output_folder(tmp_path, 1, 4)):
        pass
    assert sorted(path.name for path in tmp_path.iterdir()) == [LOCK_NAME]  # shared holders leave it in place
