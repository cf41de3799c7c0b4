"""A training run's directory, and `RunDir`: the one object that knows its
layout. Callers never build a path in it or spell a file name.

    output_dir/
      .lock                  the writer's PID; an exclusive lock (`lock`)
      config.gin             everything parsed; a resume's config is compared
                             with it (`check_config`, see `config_drift`)
      operative_config.gin   the bindings used (trax's config.gin would be
                             written over ours, so trax's name is not used)
      progress.jsonl         a JSON line per progress report
      eval_history.json      {metric: [[step, value], ...]}, merged on resume
      checkpoints/step_00000100/
        model.pkl.gz, model.weights.npy.gz, model.opt_slots0.npy.gz
                             trax's files (`model_files`)
        manifest.json        size and SHA-256 of each file above, the random
                             key and data positions; written last
      checkpoints/step_...damaged   set aside, never loaded again
      train/, eval/, data_counters*.pkl   trax's own (TensorBoard, streams)

The checkpoint policy, the same for the loop, an interrupted run and the
sampler: a checkpoint is written into a hidden temporary directory and
published by one rename (a kill leaves the whole checkpoint or none of it);
the newest `keep` step checkpoints stay; a load takes the newest one that
verifies (the manifest's schema, sizes and checksums, see `manifest`, then
the caller's own check), and a writer sets a damaged one aside and falls
back to the one before it. A
pickle that would run code (`safe_pickle.UnsafeCheckpoint`) is made, not
damaged: it is never set aside or passed over, the reader stops. A reader
(`read_only=True`: samplers, evaluators, non-chief processes) changes
nothing in the directory.

Pure Python and NumPy: no JAX, no trax.
"""

import errno
import fcntl
import json
import math
import os
import re
import shutil

from trax_favor import model_files
from trax_favor.run import config_drift
from trax_favor.run import files
from trax_favor.run import manifest as manifest_lib
from trax_favor.run.errors import RunError

LOCK = '.lock'
CONFIG = 'config.gin'
OPERATIVE_CONFIG = 'operative_config.gin'
PROGRESS = 'progress.jsonl'
EVAL_HISTORY = 'eval_history.json'
CHECKPOINTS = 'checkpoints'
MANIFEST = manifest_lib.MANIFEST
MODEL = 'model'  # the stem of trax's files inside each checkpoint
TRAX_CHECKPOINT = 'model.pkl.gz'  # trax's own layout: in output_dir itself
KEEP = 2  # complete checkpoints kept: the newest and the one before
verify = manifest_lib.verify  # a checkpoint against its manifest
_STEP_DIR = re.compile(r'^step_(\d+)$')
_TMP_MARK = '.tmp'


def step_name(step):
  return f'step_{step:08d}'


class Lock:
  """An exclusive lock on a run directory, for the life of this object;
  the kernel drops it when the holder exits, however it exits."""

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
      raise RunError(
          f'{output_dir} is in use by another training (PID {holder or "?"}); '
          'wait for it to end or use another --output_dir.') from None
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, f'{os.getpid()}\n'.encode(), 0)

  def release(self):
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _fsync(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def model_stem(checkpoint):
  """The stem of trax's files in checkpoint directory `checkpoint`
  (`<stem>.pkl.gz` is what `init_from_file` reads)."""
  return os.path.join(checkpoint, MODEL)


class RunDir:
  """One training run's directory (see the module docstring).

  Args:
    path: the directory (--output_dir).
    read_only: a reader: never writes, renames or deletes anything.
    keep: how many step checkpoints a save leaves.
  """

  def __init__(self, path, read_only=False, keep=KEEP):
    self.path = path
    self.read_only = read_only
    self.keep = keep
    self.passed_over = []  # damaged checkpoints a load passed over, as text

  def _file(self, name):
    return os.path.join(self.path, name)

  def _writable(self):
    if self.read_only:
      raise RunError(f'{self.path} is open read-only here.')

  # -- the lock and the config ----------------------------------------------
  def lock(self):
    """Creates the directory and takes its exclusive lock (a Lock)."""
    self._writable()
    self.create()
    return Lock(self.path)

  def create(self):
    """Creates the directory and its parents if missing: one RunError when
    a file stands in the way."""
    try:
      os.makedirs(self.path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
      what = ('is a file' if os.path.isfile(self.path) else
              'lies under a file')
      raise RunError(f'--output_dir {self.path} {what}, not a directory: '
                     'give a directory for the run.') from None

  def check_config(self, config_text, allow_changes=False):
    """`config_drift.check` against the saved config.gin, if there is one:
    the accepted differences as one line ('' if none), or RunError."""
    path = self._file(CONFIG)
    if not os.path.exists(path):
      return ''
    try:
      with open(path) as f:
        saved = f.read()
    except UnicodeDecodeError as e:
      raise RunError(
          f'{path} is damaged (not text: {e}); put back the config the run '
          'was trained with, or move it away (each checkpoint still checks '
          'the model).') from None
    return config_drift.check(saved, config_text, self.path, allow_changes)

  def save_config(self, config_text):
    self._writable()
    files.save_text(config_text, self._file(CONFIG))

  def save_operative_config(self, text):
    self._writable()
    files.save_text(text, self._file(OPERATIVE_CONFIG))

  def has_trax_layout(self):
    """Whether the directory holds trax's own checkpoint and none of ours."""
    return (os.path.exists(self._file(TRAX_CHECKPOINT))
            and not self.checkpoint_steps())

  # -- checkpoints ----------------------------------------------------------
  def _checkpoints(self):
    return self._file(CHECKPOINTS)

  def _checkpoints_dir(self):
    """checkpoints/, or None if there is none yet.

    Raises:
      RunError: something else than a directory has its name (a run would
        start over at step 0, then fail to save).
    """
    base = self._checkpoints()
    if not os.path.lexists(base):
      return None
    if not os.path.isdir(base):
      raise RunError(
          f'{base} is not a directory (the run\'s checkpoints go there): '
          'move it away, or use another --output_dir.')
    return base

  def checkpoint_steps(self):
    """[(step, directory)] of the published step checkpoints, newest first."""
    base = self._checkpoints_dir()
    if base is None:
      return []
    found = [(int(m.group(1)), os.path.join(base, name))
             for name in os.listdir(base) for m in [_STEP_DIR.match(name)]
             if m]
    return sorted(found, reverse=True)

  def damaged_checkpoints(self):
    """The names of the checkpoints set aside as damaged (<name>.damaged)."""
    base = self._checkpoints_dir()
    if base is None:
      return []
    return sorted(name for name in os.listdir(base)
                  if '.damaged' in name and not name.startswith('.'))

  def start_afresh(self):
    """For a run with nothing whole left (`--start_afresh`): moves the
    checkpoints, eval history and progress into before_afresh[.N]/ (kept
    as evidence), so the run starts at step 0. Returns that directory, or
    None where there was nothing to move.

    Raises:
      RunError: a whole checkpoint is left (a rerun resumes from it).
    """
    self._writable()
    path, _ = self.latest_checkpoint()
    if path is not None:
      raise RunError(
          f'{path} is a whole checkpoint: rerun without --start_afresh to '
          'resume from it, or use another --output_dir to start afresh.')
    found = [name for name in (CHECKPOINTS, EVAL_HISTORY, PROGRESS)
             if os.path.lexists(self._file(name))]
    if not found:
      return None
    target, n = self._file('before_afresh'), 1
    while os.path.exists(target):
      target, n = self._file(f'before_afresh.{n}'), n + 1
    os.makedirs(target)
    for name in found:
      os.rename(self._file(name), os.path.join(target, name))
    return target

  def save_checkpoint(self, step, write, record, name=None):
    """Publishes one checkpoint as a whole, then keeps the newest `keep`.

    Args:
      step: the step it holds (recorded in the manifest).
      write: write(directory) fills a temporary directory with trax's files
        (see `model_stem`).
      record: more JSON for the manifest (random key, data positions).
      name: another name than step_<step> (trax's permanent and
        best-metric checkpoints), never pruned.

    Returns:
      The published directory.
    """
    self._writable()
    final = self.publish(name or step_name(step), write,
                         {'step': step, **record})
    for _, path in self.checkpoint_steps()[self.keep:]:
      shutil.rmtree(path, ignore_errors=True)
    return final

  def publish(self, name, write, record):
    """Writes checkpoints/<name> as a whole: write(tmp) fills a temporary
    directory, the manifest (sizes, checksums and `record`) goes in last,
    one rename publishes it. Keeps every other checkpoint."""
    self._writable()
    base = self._checkpoints()
    os.makedirs(base, exist_ok=True)
    tmp = os.path.join(base, f'.{name}{_TMP_MARK}{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write(tmp)
    listing = {f: {'bytes': os.path.getsize(os.path.join(tmp, f)),
                   'sha256': manifest_lib.digest(os.path.join(tmp, f))}
               for f in sorted(os.listdir(tmp))}
    files.save_json({'files': listing, **record}, os.path.join(tmp, MANIFEST))
    _fsync(tmp)
    final = os.path.join(base, name)
    aside = None
    if os.path.exists(final):  # the same step saved again (e.g. on Ctrl-C)
      aside = os.path.join(base, f'.{name}.old{_TMP_MARK}{os.getpid()}')
      os.rename(final, aside)
    os.rename(tmp, final)  # the commit
    _fsync(base)
    if aside:
      shutil.rmtree(aside, ignore_errors=True)
    return final

  def latest_checkpoint(self, check=None):
    """(directory, check(directory)) of the newest checkpoint that passes
    `check` (default: `verify`), or (None, None).

    A checkpoint `check` finds damaged (model_files.DamagedCheckpoint or an
    OSError) is passed over, recorded in `passed_over`, and, unless
    read-only, set aside as <name>.damaged. safe_pickle.UnsafeCheckpoint
    is not caught: the load stops there.
    """
    check = check or verify
    self.passed_over = []
    for _, path in self.checkpoint_steps():
      try:
        return path, check(path)
      except (model_files.DamagedCheckpoint, OSError) as e:
        message = str(e)
        if not self.read_only:
          message += f' (set aside as {self._set_aside(path)})'
        self.passed_over.append(message)
    return None, None

  def _set_aside(self, path):
    """Renames a damaged checkpoint to <path>.damaged[.N] (kept as
    evidence, never loaded again); returns the new name."""
    target, n = path + '.damaged', 1
    while os.path.exists(target):
      target, n = f'{path}.damaged.{n}', n + 1
    os.rename(path, target)
    return target

  def remove_leftovers(self):
    """Deletes what killed writes left (temporary checkpoint directories
    and `._tmp_` files); call it holding the lock. Returns them."""
    self._writable()
    removed = []
    base = self._checkpoints()
    if os.path.isdir(base):
      for name in os.listdir(base):
        if name.startswith('.') and _TMP_MARK in name:
          shutil.rmtree(os.path.join(base, name), ignore_errors=True)
          removed.append(os.path.join(base, name))
    if os.path.isdir(self.path):
      for name in os.listdir(self.path):
        if name.endswith('._tmp_'):
          os.remove(self._file(name))
          removed.append(self._file(name))
    return removed

  # -- eval history and progress --------------------------------------------
  def read_eval_history(self):
    """{metric: [(step, value), ...]} as merge_eval_history wrote it."""
    path = self._file(EVAL_HISTORY)
    try:
      history = files.load_json(path) or {}
      return {metric: [(int(step), float(value)) for step, value in points]
              for metric, points in history.items()}
    except (ValueError, TypeError, AttributeError) as e:
      raise RunError(
          f'{path} is damaged ({type(e).__name__}: {e}); move it away to '
          'continue (the evals it held are lost, the checkpoints are not).'
      ) from None

  def merge_eval_history(self, points):
    """Merges {metric: [(step, value), ...]} into eval_history.json (a
    resumed run's evals join the earlier ones; a step's newer value wins)."""
    self._writable()
    history = {metric: dict(found)
               for metric, found in self.read_eval_history().items()}
    for metric, found in points.items():
      history.setdefault(metric, {}).update(found)
    files.save_json({metric: sorted(found.items())
                     for metric, found in history.items()},
                    self._file(EVAL_HISTORY))

  def read_progress(self):
    """The records of progress.jsonl, the latest one per step.

    A run resumed from a checkpoint repeats the steps after it; their later
    records win. A line cut short by a kill, or that is no record (see
    `_progress_record_ok`), is skipped.
    """
    by_step = {}
    path = self._file(PROGRESS)
    if os.path.exists(path):
      with open(path, errors='replace') as f:
        for line in f:
          try:
            record = json.loads(line)
          except ValueError:
            continue
          if _progress_record_ok(record):
            by_step[record['step']] = record
    return [by_step[step] for step in sorted(by_step)]

  def append_progress(self, record):
    self._writable()
    with open(self._file(PROGRESS), 'a') as f:
      f.write(json.dumps(record) + '\n')


def _progress_record_ok(record):
  """Whether a line of progress.jsonl is a record this module wrote (an
  object with a step count and the training seconds); others (a line
  damaged or written by something else) are skipped like a cut one."""
  if not isinstance(record, dict):
    return False
  step, seconds = record.get('step'), record.get('seconds')
  return (isinstance(step, int) and not isinstance(step, bool) and step >= 0
          and isinstance(seconds, (int, float))
          and not isinstance(seconds, bool) and math.isfinite(seconds)
          and seconds >= 0)


def check_config(output_dir, config_text, allow_changes=False):
  """RunDir(output_dir).check_config(...): for a caller with a path only."""
  return RunDir(output_dir, read_only=True).check_config(config_text,
                                                         allow_changes)
