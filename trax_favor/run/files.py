"""Text and JSON files that survive a kill: written whole to a temporary
name, then renamed over the old one (an interrupted write leaves the
previous file)."""

import json
import os


def save_text(text, path):
  """Writes text to path atomically (temp file, then rename)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '._tmp_'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def save_json(record, path):
  """Writes record to path atomically (temp file, then rename)."""
  save_text(json.dumps(record, indent=1), path)


def load_json(path):
  """The record at path, or None if there is none yet."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
