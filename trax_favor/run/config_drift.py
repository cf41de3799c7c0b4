"""Config drift: how a resumed run's gin config differs from the one its run
directory was trained with, and which differences are allowed.

Bindings are compared one by one, with macros resolved, in three classes:

  safe    train.steps, when to evaluate or checkpoint, and how (not what)
          a layer computes (block_size, chunk_size, ff_chunk_size,
          sequence_axis): taken, and reported;
  other   train's other parameters (data, optimizer, schedule, seeds, metrics)
          and every binding of the configurables they refer to (e.g.
          Adam.*, multifactor.*, local_text_inputs.*), and the task and loss
          configurables (TrainTask.*, ...): refused unless the caller allows
          them (`--allow_config_change`);
  model   everything else: train.model, what it refers to (PerformerLM.*,
          FavorSelfAttention.*) and any configurable no train parameter
          reaches (LayerNorm.epsilon): a change is always refused.

A checkpoint also records the model bindings of the operative config it was
trained with (`model_config`), defaults included, so that a resume checks
the model even where config.gin is gone (`check_model_config`).

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
# Parameters that decide how a model computes, not what (outputs do not
# depend on them): safe wherever they are bound.
SAFE_PARAMETERS = ('block_size', 'chunk_size', 'ff_chunk_size',
                   'sequence_axis')
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


# Configurables of the training task and its loss: not the model.
NOT_MODEL = ('TrainTask', 'EvalTask', 'WeightedCategoryCrossEntropy',
             'CrossEntropyLoss', 'WeightedCategoryAccuracy', 'backend',
             'num_devices')


def _reached(found, roots):
  """The keys of `found` of every configurable referenced (@name) from the
  values of `roots`, transitively."""
  todo = [_name(r) for root in roots
          for r in _REFERENCE.findall(found.get(root, ''))]
  seen, keys = set(), set()
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


def _is_train(key):
  return _name(key.rsplit('.', 1)[0]) == 'train'


def _is_safe(key):
  return key in SAFE or key.rsplit('.', 1)[-1] in SAFE_PARAMETERS


def model_bindings(found):
  """The keys of `found` that may shape the model: train.model, what it
  reaches, and every binding that no other parameter of train reaches
  and that is not a task's or a loss's (see the module docstring); safe
  ones excepted."""
  model = _reached(found, ['train.model']) | {'train.model'}
  other = _reached(found, [k for k in found
                           if _is_train(k) and k != 'train.model'])
  return {k for k in model | {k for k in found
                              if not _is_train(k) and k not in other
                              and _name(k.rsplit('.', 1)[0]) not in NOT_MODEL}
          if not _is_safe(k)}


def model_config(operative_text):
  """{binding: value} of an operative config's model bindings, for a
  checkpoint to record."""
  found = bindings(operative_text)
  return {k: found[k] for k in sorted(model_bindings(found) & set(found))}


def check_model_config(recorded, operative_text, where):
  """Refuses where a model binding that both `recorded` (a checkpoint's
  `model_config`) and the current operative config hold differs: a model
  is never resumed as another one, whatever config.gin says or whether it
  is there. Bindings only one side holds (a configurable not called yet)
  are not compared.

  Raises:
    RunError: listing the differing bindings, old -> new.
  """
  now = model_config(operative_text)
  diffs = [(k, recorded[k], now[k]) for k in sorted(set(recorded) & set(now))
           if recorded[k] != now[k]]
  if diffs:
    raise RunError(
        f'{where} was trained with another model: {_describe(diffs)}. Use '
        'another --output_dir for another model.')


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
  other = [d for d in diffs if not _is_safe(d[0])]
  if other and not allow_changes:
    raise RunError(
        f'the config differs from the one {where} was trained with: '
        f'{_describe(other)}. Pass --allow_config_change to resume with '
        'these changes, or use another --output_dir.')
  return _describe(diffs)
