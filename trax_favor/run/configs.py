"""Gin configs of runs: parse them, and read what they bind.

`include 'gin/...'` lines resolve against each config file's folder and its
parents, so a config runs from any working directory.
"""

import contextlib
import logging
import os

import gin

from trax_favor import configurables  # pylint: disable=unused-import
from trax_favor.run.errors import RunError


def _search_paths(config_file):
  """The config's folder and its parents: where `include 'gin/...'` resolves."""
  path = os.path.dirname(os.path.abspath(config_file))
  paths = []
  while True:
    paths.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      return paths
    path = parent


def _not_path_not_found(record):
  return not record.getMessage().startswith('Path not found')


@contextlib.contextmanager
def _quiet_include_search():
  """Drops gin's "Path not found" errors (logged as each search path is
  tried for an `include`, also when a later one resolves it); an include
  that resolves nowhere still fails the parse."""
  root_logger = logging.getLogger()
  root_logger.addFilter(_not_path_not_found)
  try:
    yield
  finally:
    root_logger.removeFilter(_not_path_not_found)


def parse_config(config_files, bindings=()):
  """Clears gin, then parses config files (in order) and bindings.

  `include` lines inside the files resolve against the current directory and
  each parent folder of the config files, so `include 'gin/pg19/base.gin'`
  works from any working directory.

  Raises:
    RunError: a config file is missing or does not parse.
  """
  if not config_files:
    raise RunError('give at least one --config_file.')
  gin.clear_config()
  for config_file in config_files:
    if os.path.isdir(config_file):
      raise RunError(f'--config_file {config_file} is a directory: give a '
                     'gin file in it (e.g. gin/offline_default.gin).')
    if not os.path.isfile(config_file):
      raise RunError(f'config file not found: {config_file}')
    for path in _search_paths(config_file):
      gin.add_config_file_search_path(path)
  try:
    with _quiet_include_search():
      gin.parse_config_files_and_bindings(list(config_files), list(bindings),
                                          finalize_config=False)
  except (ValueError, IOError, SyntaxError) as e:
    raise RunError(f'cannot parse {list(config_files)} with bindings '
                   f'{list(bindings)}: {e}') from e


def configured_model_fn():
  """The model factory bound as `train.model` (call it with mode=...)."""
  try:
    return gin.query_parameter('train.model').scoped_configurable_fn
  except ValueError as e:
    raise RunError('the config binds no train.model.') from e


def configured_image_size():
  """The side of the images the config trains on, or None for text."""
  if 'imagenet64_inputs' not in str(gin.query_parameter('train.inputs')):
    return None
  return configured_value('trax_favor.imagenet64_inputs.image_size')


def configured_value(binding):
  """The value bound to `binding`, with a %MACRO resolved to its value."""
  value = gin.query_parameter(binding)
  if isinstance(value, gin.config.ConfigurableReference):  # a %MACRO
    value = value.scoped_configurable_fn()
  return value


def operative_config_str():
  """gin's operative config (the bindings used so far) plus the config's
  `train.*` block, which trax_favor's Loop reads without calling trax's
  `train`."""
  blocks = gin.config_str().split('\n\n')
  train = [b for b in blocks if '# Parameters for train:' in b]
  return '\n\n'.join([gin.operative_config_str().rstrip(), *train]) + '\n'
