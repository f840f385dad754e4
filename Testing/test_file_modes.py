"""Files GASE writes (through a temporary file and a rename) get the mode of an ordinary new file.

``tempfile.mkstemp`` alone would leave them readable by their owner only: a model installed or a
segmentation written on a shared workstation would be unreadable to the colleagues it is for."""
from __future__ import annotations

import os
import shutil
import stat

import pytest

from conftest import make_knee_result
from gase.fsutil import _umask, temp_file
from gase.model_card import attach_source_expert, load_card, write_card
from gase.segment_job import write_outputs


DEFAULT_UMASK = _umask()  # the test process's, under which the session's tiny model was trained


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_temp_file_has_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    fd, path = temp_file(tmp_path, ".x-")
    os.close(fd)
    with open(tmp_path / "plain", "w"):
        pass
    assert _mode(path) == _mode(tmp_path / "plain") == 0o666 & ~mask


def test_segmentation_outputs_are_readable_by_the_group(tmp_path, umask):
    umask(0o022)
    paths = write_outputs(make_knee_result().result, tmp_path / "out", "case", overwrite=False, nifti=True)
    assert len(paths) == 4
    for p in paths.values():
        assert _mode(p) == 0o644, p.name


def test_model_folder_files_are_readable_by_the_group(tiny_model, tmp_path, umask):
    umask(0o022)
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    card = load_card(folder)
    expert = tmp_path / "expert"
    shutil.copytree(tiny_model / "training" / "source-expert", expert, ignore=shutil.ignore_patterns("training"))
    for name in ("expert.safetensors", "expert_validity.safetensors"):
        (folder / name).unlink()
    card.source_expert = None
    write_card(card, folder)
    attach_source_expert(folder, expert)
    for name in ("model.json", "expert.safetensors", "expert_validity.safetensors"):
        assert _mode(folder / name) == 0o644, name
    # and the files a training run writes in the first place
    written = [p for p in sorted(tiny_model.iterdir()) if p.is_file()]
    assert {p.name for p in written} >= {"model.json", "weights.safetensors", "expert.safetensors"}
    for p in written:
        assert _mode(p) == 0o666 & ~DEFAULT_UMASK, p.name
