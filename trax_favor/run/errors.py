"""The error of a run that cannot start or continue.

Pure Python: the run directory, the distributed set-up and the command
lines raise it without importing trax or JAX.
"""


class RunError(RuntimeError):
  """A run cannot start: bad config files, a run directory in use or made
  by another config, or a checkpoint that does not fit."""
