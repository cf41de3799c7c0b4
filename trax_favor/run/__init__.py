"""The run layer: everything a training or sampling run does with its
directory, its processes and its command line.

  run_dir       `RunDir`, the one owner of a run directory's layout: lock,
                config.gin and config drift, checkpoints (publish, verify,
                fall back, keep N, damaged marks), eval history, operative
                config, progress
  config_drift  how a resumed config may differ from the saved one
  checkpoints   readers: the newest whole checkpoint, the restored model
  configs       gin: parse config files, read what they bind
  loop          trax's Loop with RunDir checkpoints and an exact resume
  training      `train`: open, restore, steps, save, stop
  progress      progress lines and records, eval history after each eval
  interrupts    Ctrl-C and SIGTERM: finish the step, save, exit
  distributed   data-parallel training over JAX's distributed runtime
  sequence_parallel
                `--sequence_parallel=N`: every sequence split over N
                local devices (one mesh, trax on one device)
  commands      what `python -m trax_favor.train`, `.sample` and
                `.trax_trainer` do once their flags are parsed
  cli           command-line plumbing: quiet start, flags, one-line errors
  errors        RunError (pure Python)
  files, memory atomic text/JSON files; memory figures

Importing this package imports nothing (its modules load on first use,
as trax_favor.run.<module>): the entry modules import `cli`
before trax loads (see `cli.quiet_start`).
"""

import importlib

_SUBMODULES = ('checkpoints', 'cli', 'commands', 'config_drift', 'configs',
               'distributed', 'errors', 'files', 'interrupts', 'loop',
               'memory', 'progress', 'run_dir', 'sequence_parallel',
               'training')

__all__ = list(_SUBMODULES)


def __getattr__(name):
  """trax_favor.run.<module>, imported on first use."""
  if name in _SUBMODULES:
    return importlib.import_module(f'trax_favor.run.{name}')
  raise AttributeError(f'module trax_favor.run has no attribute {name!r}')
