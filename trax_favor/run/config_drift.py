"""Config drift: how a resumed run's gin config differs from the one its run
directory was trained with, and which differences are allowed.

Bindings are compared one by one, with macros resolved, in three classes:

  model   train.model and every binding of the configurables it refers to
          (e.g. PerformerLM.*, FavorSelfAttention.*: the shapes, the
          feature map, the random features): a change is always refused;
  safe    train.steps and when to evaluate or checkpoint: taken, and
          reported;
  other   data, optimizer, schedule, seeds: refused unless the caller
          allows them (`--allow_config_change`).

Pure Python on gin's config text: no gin, no trax. `RunDir.check_config`
reads the saved text and calls `check`.
"""

import re

from trax_favor.run.errors import RunError

SAFE = ('train.steps', 'train.eval_frequency', 'train.eval_steps',
        'train.save_graphs', 'train.checkpoints_at',
        'train.permanent_checkpoints_at',
        'train.permanent_checkpoint_frequency',
        'train.checkpoint_highest', 'train.checkpoint_lowest')
_BINDING = re.compile(r'^([\w./]+) = (.*)$')
_REFERENCE = re.compile(r'@([\w./]+)')


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


def check(saved_text, config_text, where, allow_changes=False):
  """Refuses `config_text` where it differs from `saved_text` (the config
  `where` was trained with) in a binding that shapes the model (always) or
  elsewhere (unless allow_changes).

  Returns:
    The accepted differences as one line for the log, or '' if none.

  Raises:
    RunError: listing the refused bindings, old -> new.
  """
  diffs = differences(saved_text, config_text)
  shaping = model_bindings(bindings(saved_text)) | model_bindings(
      bindings(config_text))
  refused = [d for d in diffs if d[0] in shaping]
  if refused:
    raise RunError(
        f'the config differs from the one {where} was trained with, '
        f'where it shapes the model: {_describe(refused)}. Use another '
        '--output_dir for another model.')
  other = [d for d in diffs if d[0] not in SAFE]
  if other and not allow_changes:
    raise RunError(
        f'the config differs from the one {where} was trained with: '
        f'{_describe(other)}. Pass --allow_config_change to resume with '
        'these changes, or use another --output_dir.')
  return _describe(diffs)
