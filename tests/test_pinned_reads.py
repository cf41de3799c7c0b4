"""A reader of a checkpoint's files while a training run prunes it: the
files opened together read whole even when the directory is removed
between the opens and the reads (`model_files.read_together`), and a file
already gone is one clear error for `load_weights` / `load_projections`."""

import builtins
import os
import shutil

import numpy as np
import pytest

from trax_favor import checks
from trax_favor import model_files
from trax_favor.layers import projections


def _checkpoint(directory):
  os.makedirs(directory)
  stem = os.path.join(directory, 'model')
  arrays = [np.arange(6.0).reshape(2, 3), np.ones(4, np.float32)]
  model_files.write_pickle({'flat_weights': 2, 'step': 7}, stem + '.pkl.gz')
  model_files.write_arrays(arrays, stem + '.weights.npy.gz')
  return stem, arrays


def test_files_opened_together_read_whole_after_a_prune(tmp_path,
                                                        monkeypatch):
  directory = str(tmp_path / 'step_00000007')
  stem, arrays = _checkpoint(directory)
  paths = [stem + '.pkl.gz', stem + '.weights.npy.gz']
  real_open, opened = builtins.open, []

  def open_then_prune(path, *args, **kwargs):
    handle = real_open(path, *args, **kwargs)
    opened.append(path)
    if len(opened) == len(paths):  # the trainer prunes before any read
      shutil.rmtree(directory)
    return handle

  monkeypatch.setattr(builtins, 'open', open_then_prune)
  raw = model_files.read_together(*paths)
  monkeypatch.setattr(builtins, 'open', real_open)
  assert not os.path.exists(directory)
  assert model_files.read_pickle(paths[0], raw[paths[0]])['step'] == 7
  for found, expected in zip(model_files.read_arrays(paths[1], raw[paths[1]]),
                             arrays):
    np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize('load', [projections.load_weights,
                                  projections.load_projections])
def test_a_pruned_file_is_one_clear_error(tmp_path, load):
  missing = str(tmp_path / 'checkpoints' / 'step_00000001' / 'model.pkl.gz')
  with pytest.raises(checks.ConfigError,
                     match='does not exist .a training run keeps'):
    load(None, missing)  # refused before the model is looked at
