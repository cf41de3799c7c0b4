"""Checkpoints that are whole or absent, and loads that verify them.

A run's checkpoints live in output_dir/checkpoints/, one directory each:

    checkpoints/step_00000100/
      model.pkl.gz             step, model state, history (trax's format)
      model.weights.npy.gz     weights, one array after another (trax's)
      model.opt_slots0.npy.gz  optimizer slots of each task (trax's)
      manifest.json            size and SHA-256 of each file above, the
                               random-key and data positions; written last

A checkpoint is written into a hidden temporary directory and published
by one rename of that directory, so a kill at any moment leaves either the
whole new checkpoint or none of it. A load first checks the manifest's
sizes and checksums, then reads every array to the end of its file: a
damaged, truncated or mixed checkpoint is refused (`DamagedCheckpoint`),
never filled up with fresh values. The newest `KEEP` checkpoints stay, so
a damaged one has a predecessor to fall back to.

The files inside are trax's, so `model.init_from_file(path)` of any layer
reads `checkpoints/step_.../model.pkl.gz` as it reads trax's own. Our
readers load the pickle with `safe_pickle`, which runs no code from it; a
file that would (`UnsafeCheckpoint`) is not damaged but made: it is never
set aside or passed over, the reader stops.

Pure Python and NumPy: no JAX, no trax.
"""

import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import zlib

import numpy as np

from trax_favor import files
from trax_favor import safe_pickle

CHECKPOINTS = 'checkpoints'
MANIFEST = 'manifest.json'
KEEP = 2  # complete checkpoints kept: the newest and the one before
_STEP_DIR = re.compile(r'^step_(\d+)$')
_TMP_MARK = '.tmp'


class DamagedCheckpoint(Exception):
  """A checkpoint whose files do not load completely or do not belong
  together; str() names the file and what is wrong with it."""


def step_name(step):
  return f'step_{step:08d}'


def root(output_dir):
  return os.path.join(output_dir, CHECKPOINTS)


def _fsync(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


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


def _gunzip(path):
  try:
    with gzip.open(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DamagedCheckpoint(f'{path}: not a complete gzip file ({e})') from e


def read_arrays(path):
  """Every array of a file write_arrays wrote; DamagedCheckpoint if any
  byte of it is missing or unreadable (trax's reader stops quietly)."""
  data = _gunzip(path)
  stream, arrays = io.BytesIO(data), []
  while stream.tell() < len(data):
    try:
      arrays.append(np.load(stream, allow_pickle=False))
    except (ValueError, OSError, EOFError) as e:
      raise DamagedCheckpoint(
          f'{path}: array {len(arrays)} does not read ({e})') from e
  return arrays


def read_pickle(path):
  """The object in a gzipped pickle (`model.pkl.gz`), read by
  `safe_pickle`: it runs no code from the file.

  Raises:
    safe_pickle.UnsafeCheckpoint: the file names a global outside the
      allow-list: it was made, not damaged, so never fall back past it.
    DamagedCheckpoint: the file is not a complete gzipped pickle.
  """
  data = _gunzip(path)
  try:
    return safe_pickle.loads(data, path)
  except safe_pickle.UnsafeCheckpoint:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise DamagedCheckpoint(f'{path}: does not unpickle ({e})') from e


def _digest(path):
  sha = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      sha.update(block)
  return sha.hexdigest()


def publish(output_dir, name, write, record):
  """Writes one checkpoint as a whole: `write(directory)` fills a temporary
  directory, the manifest (file sizes, checksums, and `record`) goes in
  last, and one rename publishes it as checkpoints/<name>.

  Returns:
    The published directory.
  """
  base = root(output_dir)
  os.makedirs(base, exist_ok=True)
  tmp = os.path.join(base, f'.{name}{_TMP_MARK}{os.getpid()}')
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  write(tmp)
  listing = {f: {'bytes': os.path.getsize(os.path.join(tmp, f)),
                 'sha256': _digest(os.path.join(tmp, f))}
             for f in sorted(os.listdir(tmp))}
  files.save_json({'files': listing, **record}, os.path.join(tmp, MANIFEST))
  _fsync(tmp)
  final = os.path.join(base, name)
  aside = None
  if os.path.exists(final):  # the same step saved again (e.g. on Ctrl-C)
    aside = os.path.join(base, f'.{name}.old{_TMP_MARK}{os.getpid()}')
    os.rename(final, aside)
  os.rename(tmp, final)  # the commit
  _fsync(base)
  if aside:
    shutil.rmtree(aside, ignore_errors=True)
  return final


def verify(path):
  """The manifest of checkpoint directory `path` after checking that every
  file it lists is there with its size and checksum, and nothing else is.

  Raises:
    DamagedCheckpoint: naming the first file that is wrong.
  """
  manifest_path = os.path.join(path, MANIFEST)
  try:
    manifest = files.load_json(manifest_path)
  except ValueError as e:
    raise DamagedCheckpoint(f'{manifest_path}: unreadable ({e})') from e
  if manifest is None:
    raise DamagedCheckpoint(f'{manifest_path}: missing')
  for name, expected in manifest['files'].items():
    file_path = os.path.join(path, name)
    if not os.path.exists(file_path):
      raise DamagedCheckpoint(f'{file_path}: missing')
    size = os.path.getsize(file_path)
    if size != expected['bytes']:
      raise DamagedCheckpoint(f'{file_path}: {size} bytes, the manifest says '
                              f'{expected["bytes"]}')
    if _digest(file_path) != expected['sha256']:
      raise DamagedCheckpoint(f'{file_path}: checksum differs from the '
                              'manifest (the file was changed or damaged)')
  return manifest


def steps(output_dir):
  """[(step, directory)] of the published step checkpoints, newest first."""
  base = root(output_dir)
  if not os.path.isdir(base):
    return []
  found = [(int(m.group(1)), os.path.join(base, name))
           for name in os.listdir(base) for m in [_STEP_DIR.match(name)] if m]
  return sorted(found, reverse=True)


def set_aside(path):
  """Renames a damaged checkpoint to <path>.damaged[.N] (kept as evidence,
  never loaded again); returns the new name."""
  target, n = path + '.damaged', 1
  while os.path.exists(target):
    target, n = f'{path}.damaged.{n}', n + 1
  os.rename(path, target)
  return target


def prune(output_dir, keep=KEEP):
  """Deletes step checkpoints older than the newest `keep`."""
  for _, path in steps(output_dir)[keep:]:
    shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(output_dir):
  """Deletes what killed writes left: temporary checkpoint directories and
  `._tmp_` files. Call only while holding the run's lock. Returns them."""
  removed = []
  base = root(output_dir)
  if os.path.isdir(base):
    for name in os.listdir(base):
      if name.startswith('.') and _TMP_MARK in name:
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        removed.append(os.path.join(base, name))
  if os.path.isdir(output_dir):
    for name in os.listdir(output_dir):
      if name.endswith('._tmp_'):
        os.remove(os.path.join(output_dir, name))
        removed.append(os.path.join(output_dir, name))
  return removed
