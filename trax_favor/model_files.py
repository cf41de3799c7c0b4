"""trax's model files, written completely and read completely.

What trax's `save_to_file` writes and `init_from_file` reads, inside each
checkpoint directory of a run (see `trax_favor.run.run_dir`):

    model.pkl.gz             step, model state, history (a gzipped pickle)
    model.weights.npy.gz     weights, one array after another
    model.opt_slots0.npy.gz  optimizer slots of each task

Writers fsync what they write. Readers read every array to the end of its
file, so a truncated or damaged file raises `DamagedCheckpoint` instead of
loading part of a model (trax's reader stops quietly). The pickle is read
with `safe_pickle`, which runs no code from it: a file that would
(`safe_pickle.UnsafeCheckpoint`) is not damaged but made.

Pure Python and NumPy: no JAX, no trax; `layers` (load_projections,
load_weights) and `run` (checkpoints) both read through it.
"""

import gzip
import io
import os
import pickle
import zlib

import numpy as np

from trax_favor import safe_pickle


class DamagedCheckpoint(Exception):
  """A checkpoint whose files do not load completely or do not belong
  together; str() names the file and what is wrong with it."""


def write_arrays(arrays, path):
  """Writes NumPy arrays one after another into a gzip file (trax's form)."""
  with open(path, 'wb') as f:
    with gzip.GzipFile(fileobj=f, mode='wb', compresslevel=2) as gz:
      for array in arrays:
        np.save(gz, np.asarray(array), allow_pickle=False)
    f.flush()
    os.fsync(f.fileno())


def write_pickle(obj, path):
  with open(path, 'wb') as f:
    with gzip.GzipFile(fileobj=f, mode='wb', compresslevel=2) as gz:
      pickle.dump(obj, gz, protocol=pickle.HIGHEST_PROTOCOL)
    f.flush()
    os.fsync(f.fileno())


def read_together(*paths):
  """{path: its bytes} of each path that exists, every file opened before
  any is read: where a training run prunes the checkpoint meanwhile (its
  directory removed), the open files still read whole, as one checkpoint.
  """
  handles = {}
  try:
    for path in paths:
      try:
        handles[path] = open(path, 'rb')
      except FileNotFoundError:
        pass
    return {path: f.read() for path, f in handles.items()}
  finally:
    for f in handles.values():
      f.close()


def _gunzip(path, raw=None):
  """The decompressed contents of the gzip file at path (or of its bytes
  `raw`, read earlier)."""
  try:
    if raw is not None:
      return gzip.decompress(raw)
    with gzip.open(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DamagedCheckpoint(f'{path}: not a complete gzip file ({e})') from e


def read_arrays(path, raw=None):
  """Every array of a file write_arrays wrote (or of its bytes `raw`);
  DamagedCheckpoint if any byte of it is missing or unreadable (trax's
  reader stops quietly)."""
  data = _gunzip(path, raw)
  stream, arrays = io.BytesIO(data), []
  while stream.tell() < len(data):
    try:
      arrays.append(np.load(stream, allow_pickle=False))
    except (ValueError, OSError, EOFError) as e:
      raise DamagedCheckpoint(
          f'{path}: array {len(arrays)} does not read ({e})') from e
  return arrays


def read_pickle(path, raw=None):
  """The object in a gzipped pickle (`model.pkl.gz`, or its bytes `raw`),
  read by `safe_pickle`: it runs no code from the file.

  Raises:
    safe_pickle.UnsafeCheckpoint: the file names a global outside the
      allow-list: it was made, not damaged, so never fall back past it.
    DamagedCheckpoint: the file is not a complete gzipped pickle.
  """
  data = _gunzip(path, raw)
  try:
    return safe_pickle.loads(data, path)
  except safe_pickle.UnsafeCheckpoint:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise DamagedCheckpoint(f'{path}: does not unpickle ({e})') from e
