"""Argument checks shared by ops, layers, models and data: one clear
ConfigError (a ValueError) naming the argument, never a traceback from
inside JAX.

Pure Python (no jax, no trax), so `trax_favor.ops` can use it.
"""

MODES = ('train', 'eval', 'predict')


class ConfigError(ValueError):
  """A bad argument or config binding. The command lines print its message
  as one line; it is a ValueError, so callers may catch either."""


class ProjectionMissing(ConfigError):
  """A FAVOR layer whose weights were loaded without its fixed projection,
  refusing to run. Raised inside a layer's forward, it passes through
  trax's LayerError wrapping unchanged (compat's
  `layer_error_passes_projection_missing`), so the user sees its one line."""


def check_positive_int(**values):
  """Raises ConfigError naming the first value that is not an int > 0.

  bool is refused (True is an int in Python, never a size here).
  """
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ConfigError(f'{name} must be a positive int, got {value!r}.')


def check_rate(**values):
  """Raises ConfigError unless every value is a float (or int) in [0, 1)."""
  for name, value in values.items():
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or not 0.0 <= value < 1.0):
      raise ConfigError(f'{name} must be a float in [0, 1), got {value!r}.')


def check_mode(mode):
  """Raises ConfigError unless mode is 'train', 'eval' or 'predict'."""
  if mode not in MODES:
    raise ConfigError(f'mode must be one of {MODES}, got {mode!r}.')
