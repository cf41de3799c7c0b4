"""A checkpoint's manifest (manifest.json): the size and SHA-256 of each of
its files, written last, and what a resume needs besides (the random key,
the data positions). `verify` checks a checkpoint against it.

A manifest that is not JSON, or is JSON of the wrong shape (a list, a file
entry without its size, a size that is not a count), makes its checkpoint
damaged, like a file whose checksum differs: it is passed over, never a
traceback.

Pure Python: no JAX, no trax.
"""

import hashlib
import os

from trax_favor import model_files
from trax_favor.run import files

MANIFEST = 'manifest.json'


def digest(path):
  """The SHA-256 of the file at path, as hex."""
  sha = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      sha.update(block)
  return sha.hexdigest()


def _is_count(value):
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def schema_error(manifest):
  """What is wrong with the shape of a loaded manifest, or None.

  The schema: {"files": {name: {"bytes": int >= 0, "sha256": str}}, ...}
  with file names that stay inside the checkpoint; "step" an int >= 0 and
  "model_config" {binding: value text} (see config_drift) if present.
  """
  if not isinstance(manifest, dict):
    return f'a JSON {type(manifest).__name__}, not an object'
  listing = manifest.get('files')
  if not isinstance(listing, dict) or not listing:
    return '"files" is missing or not an object of files'
  for name, entry in listing.items():
    if (not name or os.path.basename(name) != name or name in ('.', '..')
        or name == MANIFEST):
      return f'file name {name!r} is not a file of the checkpoint'
    if not isinstance(entry, dict):
      return f'the entry of {name} is not an object'
    if not _is_count(entry.get('bytes')):
      return f'the size of {name} is {entry.get("bytes")!r}, not a count'
    if not isinstance(entry.get('sha256'), str):
      return f'the checksum of {name} is {entry.get("sha256")!r}, not text'
  if 'step' in manifest and not _is_count(manifest['step']):
    return f'"step" is {manifest["step"]!r}, not a count'
  model = manifest.get('model_config', {})
  if not isinstance(model, dict) or not all(
      isinstance(v, str) for v in model.values()):
    return '"model_config" is not an object of binding texts'
  return None


def verify(checkpoint):
  """The manifest of checkpoint directory `checkpoint` after checking its
  schema and that every file it lists is there with its size and checksum.

  Raises:
    model_files.DamagedCheckpoint: naming the first thing that is wrong.
  """
  damaged = model_files.DamagedCheckpoint
  manifest_path = os.path.join(checkpoint, MANIFEST)
  try:
    manifest = files.load_json(manifest_path)
  except (ValueError, UnicodeDecodeError) as e:
    raise damaged(f'{manifest_path}: unreadable ({e})') from e
  if manifest is None:
    raise damaged(f'{manifest_path}: missing')
  wrong = schema_error(manifest)
  if wrong:
    raise damaged(f'{manifest_path}: not a manifest ({wrong})')
  for name, expected in manifest['files'].items():
    file_path = os.path.join(checkpoint, name)
    if not os.path.isfile(file_path):
      raise damaged(f'{file_path}: missing')
    size = os.path.getsize(file_path)
    if size != expected['bytes']:
      raise damaged(f'{file_path}: {size} bytes, the manifest says '
                    f'{expected["bytes"]}')
    if digest(file_path) != expected['sha256']:
      raise damaged(f'{file_path}: checksum differs from the manifest (the '
                    'file was changed or damaged)')
  return manifest
