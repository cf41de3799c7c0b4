"""A training run's directory: one writer at a time, and the config that made
it.

  lock    `hold(output_dir)` takes an exclusive lock (output_dir/.lock,
          holding the PID); a second training on the same directory stops
          at once, naming the holder's PID. The kernel drops the lock when
          the holder exits, however it exits.
  config  `check_config(output_dir, config_text)` compares a resumed run's
          config with the run's saved config.gin, binding by binding with
          macros resolved:
            model   train.model and every binding of the configurables it
                    refers to (e.g. PerformerLM.*, FavorSelfAttention.*: the
                    shapes, the feature map, the random features): a change
                    is always refused;
            safe    train.steps and when to evaluate or checkpoint: taken,
                    and reported;
            other   data, optimizer, schedule, seeds: refused unless the
                    caller allows them (`--allow_config_change`).
"""

import errno
import fcntl
import os
import re

from trax_favor import configs

LOCK = '.lock'
CONFIG = 'config.gin'
SAFE = ('train.steps', 'train.eval_frequency', 'train.eval_steps',
        'train.save_graphs', 'train.checkpoints_at',
        'train.permanent_checkpoints_at',
        'train.permanent_checkpoint_frequency',
        'train.checkpoint_highest', 'train.checkpoint_lowest')
_BINDING = re.compile(r'^([\w./]+) = (.*)$')
_REFERENCE = re.compile(r'@([\w./]+)')


class Lock:
  """An exclusive lock on a run directory, for the life of this object."""

  def __init__(self, output_dir):
    path = os.path.join(output_dir, LOCK)
    self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      holder = os.pread(self._fd, 64, 0).decode(errors='replace').strip()
      os.close(self._fd)
      raise configs.RunError(
          f'{output_dir} is in use by another training (PID {holder or "?"}); '
          'wait for it to end or use another --output_dir.') from None
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, f'{os.getpid()}\n'.encode(), 0)

  def release(self):
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def bindings(config_text):
  """{'selector.param' or MACRO: value text} of a gin config_str(), with
  each %MACRO value replaced by the macro's value."""
  lines = []
  for line in config_text.splitlines():
    if line[:1].isspace() and lines:  # a value continued on the next line
      lines[-1] += ' ' + line.strip()
    elif line and not line.startswith(('#', 'import ')):
      lines.append(line)
  found = dict(m.groups() for m in map(_BINDING.match, lines) if m)
  macros = {k: v for k, v in found.items() if '.' not in k}

  def resolve(value, depth=0):
    if value.startswith('%') and value[1:] in macros and depth < 10:
      return resolve(macros[value[1:]], depth + 1)
    return value
  return {k: resolve(v) for k, v in found.items() if '.' in k}


def _name(selector):
  """'scope/trax_favor.PerformerLM' -> 'PerformerLM'."""
  return selector.rsplit('/', 1)[-1].rsplit('.', 1)[-1]


def model_bindings(found):
  """The keys of `found` that shape the model: train.model and the bindings
  of every configurable reachable from it through @references."""
  todo = [_name(r) for r in _REFERENCE.findall(found.get('train.model', ''))]
  seen, keys = set(), {'train.model'}
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    for key, value in found.items():
      if _name(key.rsplit('.', 1)[0]) == name:
        keys.add(key)
        todo.extend(_name(r) for r in _REFERENCE.findall(value))
  return keys


def differences(saved_text, config_text):
  """[(key, saved value or None, new value or None)] that differ."""
  old, new = bindings(saved_text), bindings(config_text)
  return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


def _describe(diffs):
  return ', '.join(f'{k}: {"unset" if a is None else a} -> '
                   f'{"unset" if b is None else b}' for k, a, b in diffs)


def check_config(output_dir, config_text, allow_changes=False):
  """Refuses a config that differs from output_dir's saved config.gin where
  it shapes the model (always) or elsewhere (unless allow_changes).

  Returns:
    The accepted differences as one line for the log, or '' if none.

  Raises:
    RunError: listing the refused bindings, old -> new.
  """
  path = os.path.join(output_dir, CONFIG)
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    saved = f.read()
  diffs = differences(saved, config_text)
  shaping = model_bindings(bindings(saved)) | model_bindings(
      bindings(config_text))
  refused = [d for d in diffs if d[0] in shaping]
  if refused:
    raise configs.RunError(
        f'the config differs from the one {output_dir} was trained with, '
        f'where it shapes the model: {_describe(refused)}. Use another '
        '--output_dir for another model.')
  other = [d for d in diffs if d[0] not in SAFE]
  if other and not allow_changes:
    raise configs.RunError(
        f'the config differs from the one {output_dir} was trained with: '
        f'{_describe(other)}. Pass --allow_config_change to resume with '
        'these changes, or use another --output_dir.')
  return _describe(diffs)
