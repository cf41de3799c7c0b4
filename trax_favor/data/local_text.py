"""The offline default data: Python's standard library source, as bytes.

Every machine that runs trax_favor has the Python standard library, so a
byte-level LM on its `.py` files trains anywhere with nothing to download.
Files are sorted by name; every tenth one is held out for evaluation.

  train: windows of sequence_length bytes at random offsets (seeded)
  eval:  consecutive windows over the held-out files, in a fixed order
"""

import os
import sysconfig

import numpy as np

from trax_favor import checks
from trax_favor.data import streams

_EVAL_EVERY = 10  # one file in ten is held out


def stdlib_dir():
  return sysconfig.get_paths()['stdlib']


def read_corpus(root=None):
  """Reads the .py files directly under root into (train, eval) byte ids.

  Args:
    root: directory of text files (default: the standard library).

  Returns:
    (train tokens (n,) int32, eval tokens (n',) int32).
  """
  root = root or stdlib_dir()
  names = sorted(n for n in os.listdir(root) if n.endswith('.py'))
  if len(names) < _EVAL_EVERY:
    raise checks.ConfigError(
        f'local text: {root} has {len(names)} .py files; at '
        f'least {_EVAL_EVERY} are needed to hold some out.')
  parts = ([], [])
  for i, name in enumerate(names):
    with open(os.path.join(root, name), 'rb') as f:
      parts[i % _EVAL_EVERY == 0].append(f.read())
  train, evaluation = (streams.byte_tokens(b''.join(p))
                       for p in parts)
  return train, evaluation


def _random_windows(tokens, length, seed):
  rng = np.random.RandomState(seed)
  weights = np.ones((length,), np.float32)
  while True:
    start = rng.randint(0, len(tokens) - length + 1)
    yield tokens[start:start + length], weights


def _cycled_windows(tokens, length):
  while True:
    yield from streams.windows(tokens, length)


def local_text_inputs(batch_size, sequence_length, root=None, seed=0,
                      objective='causal', mask_rate=0.15):
  """trax Inputs of byte windows from local text (see module docstring).

  Args:
    batch_size: global batch size.
    sequence_length: tokens per example.
    root: directory whose .py files form the corpus (default: stdlib).
    seed: seed of the training offsets (and masks, for objective='masked').
    objective: 'causal' or 'masked'.
    mask_rate: masked LM only: fraction of tokens hidden.

  Returns:
    trax.data.Inputs.
  """
  checks.check_positive_int(sequence_length=sequence_length)
  train, evaluation = read_corpus(root)
  if len(train) < sequence_length or len(evaluation) < sequence_length:
    raise checks.ConfigError(
        f'local text: sequence_length={sequence_length} is longer than the '
        f'corpus ({len(train)} train / {len(evaluation)} eval bytes).')
  return streams.make_inputs(
      lambda: _random_windows(train, sequence_length, seed),
      lambda: _cycled_windows(evaluation, sequence_length),
      batch_size, objective, mask_rate, seed)
