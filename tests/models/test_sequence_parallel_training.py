"""`python -m trax_favor.train --sequence_parallel=N`: training and eval with
every sequence split over N devices.

JAX fixes its device count when the backend starts, so the trainings run in
child interpreters (this file as a script, XLA_FLAGS forcing 1, 2 or 4
host devices) that train the offline default config shrunk and report JSON:

  split       4 devices, --sequence_parallel=4: steps 1-3 (an eval at each
              step); then the same run directory resumed WITHOUT the flag
              (trax's data parallelism over the 4 devices) for step 4;
  split_data  the same child, --sequence_parallel=2: a (2, 2) mesh, the
              batch split over 'data' and each sequence over 'seq';
  data        the same child without the flag: trax's data parallelism
              over the 4 devices from step 1;
  reference   1 device, no flag: steps 1-4;
  job         2 processes (one job over 127.0.0.1) of 2 devices each,
              --sequence_parallel=2: one (2, 2) mesh over both, steps 1-3.

The split runs' per-step train and eval losses equal the reference's to
1e-4 relative, and so does step 4 of the resume without the flag (its
checkpoint loads either way: the wrapper adds no weight). The refusals
that need no second device run in this process (fast).
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from trax_favor import train
from trax_favor.run import sequence_parallel
from trax_favor.run.errors import RunError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
CONFIG = os.path.join(REPO, 'gin', 'offline_default.gin')
SMALL = ['D_MODEL=32', 'SEQUENCE_LENGTH=64', 'N_LAYERS=1', 'BATCH_SIZE=4',
         'N_RANDOM_FEATURES=16', 'trax_favor.PerformerLM.d_ff=64',
         'train.eval_frequency=1', 'train.eval_steps=1']
TIMEOUT = 300  # seconds per child
REL_TOL = 1e-4
SPLIT_STEPS, RESUMED_STEPS = 3, 4


def _argv(output_dir, *flags, bindings=()):
  return ([f'--config_file={CONFIG}', f'--output_dir={output_dir}',
           '--log_every=1'] + [f'--config={b}' for b in SMALL + list(bindings)]
          + list(flags))


def _error_line(capsys, argv):
  """train.main in-process; its stderr line (asserting exit 2)."""
  with pytest.raises(SystemExit) as done:
    train.main(argv)
  assert done.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and '\n' not in err, err
  return err


# -- the refusals (this process: one device) ---------------------------------
@pytest.mark.parametrize('value', ['0', '-2'])
def test_sequence_parallel_below_one_is_one_line(tmp_path, capsys, value):
  err = _error_line(capsys, _argv(tmp_path, f'--sequence_parallel={value}'))
  assert '--sequence_parallel must be an int >= 1' in err, err
  assert f'got {value}.' in err, err


def test_n_not_dividing_the_local_devices_is_one_line(tmp_path, capsys):
  err = _error_line(capsys, _argv(tmp_path, '--sequence_parallel=2'))
  assert '--sequence_parallel=2 does not divide the 1 local device' in err


def test_relative_positions_are_one_line(tmp_path, capsys):
  config = os.path.join(REPO, 'gin', 'offline_default_rpe.gin')
  argv = _argv(tmp_path, '--sequence_parallel=1')
  argv[0] = f'--config_file={config}'
  err = _error_line(capsys, argv)
  assert 'relative_position' in err and 'not supported' in err, err


def test_a_model_without_sequence_axis_is_one_line(tmp_path, capsys):
  err = _error_line(capsys, _argv(
      tmp_path, '--sequence_parallel=1',
      bindings=['train.model=@trax.models.TransformerLM',
                'TransformerLM.vocab_size=256']))
  assert 'takes no sequence_axis' in err and 'TransformerLM' in err, err


def _setup(n, n_data, n_processes=1):
  """A Setup's checks without a mesh (one device here)."""
  setup = object.__new__(sequence_parallel.Setup)
  setup.n, setup.n_data, setup.n_processes = n, n_data, n_processes
  return setup


def test_train_batches_split_over_every_process_or_one_line():
  """With 2 processes of 2 groups each, a global train batch needs 4 rows
  per split; eval batches (whole on each process) 2."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  setup = _setup(2, 2, n_processes=2)
  with pytest.raises(RunError, match='train batch size 6 is not divisible '
                     'by the 4 data-parallel groups of 2 processes'):
    next(setup.checked(iter([(np.zeros((6, 64)),)]), 'train'))
  batch = (np.zeros((6, 64)),)
  with pytest.raises(RunError, match='eval batch size 6 is not divisible '
                     r'by the 4'):
    next(_setup(2, 4).checked(iter([batch]), 'eval'))
  # Eval batches stay whole on each process: 6 rows over its 2 groups.
  assert next(setup.checked(iter([batch]), 'eval')) is batch


@pytest.mark.parametrize('shape,expected', [
    ((4, 63), 'sequence length 63 is not divisible by 2'),
    ((3, 64), 'batch size 3 is not divisible by the 2 data-parallel'),
    ((4,), 'no length axis'),
])
def test_batches_that_do_not_split_are_one_line(shape, expected):
  import numpy as np  # pylint: disable=g-import-not-at-top
  batches = _setup(2, 2).checked(iter([(np.zeros(shape),)]), 'train')
  with pytest.raises(RunError, match=expected) as refused:
    next(batches)
  assert '\n' not in str(refused.value)


def test_batches_that_split_pass_unchanged():
  import numpy as np  # pylint: disable=g-import-not-at-top
  batch = (np.zeros((4, 64), np.int32), np.ones((4, 64)))
  assert next(_setup(2, 2).checked(iter([batch]), 'eval')) is batch


# -- the trainings (children) -------------------------------------------------
def _start_children(n_devices, output_dir, n_processes=1):
  """This file as a script in n_processes children (one job over
  127.0.0.1 when several) with n_devices host devices each: (what, the
  children)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={n_devices}')
  job = []
  if n_processes > 1:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
      s.bind(('127.0.0.1', 0))
      job = [str(s.getsockname()[1])]
  return f'the {n_processes} x {n_devices}-device child', [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(output_dir), *job,
       *([str(i)] if job else [])], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(n_processes)]


def _reports(*started):
  """The JSON reports of `_start_children`'s children, in the order given,
  waiting for all of them within TIMEOUT; every child is killed on a
  failure or timeout."""
  deadline = time.monotonic() + TIMEOUT
  reports = []
  try:
    for what, children in started:
      for child in children:
        try:
          stdout, stderr = child.communicate(
              timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
          pytest.fail(f'{what} ran over {TIMEOUT} s')
        if child.returncode != 0:
          pytest.fail(f'{what} failed:\n{stderr[-4000:]}')
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
  finally:
    for _, children in started:
      for child in children:
        if child.poll() is None:
          child.kill()
          child.communicate()
  return reports


def _losses(loop):
  """{'train' and 'eval': {step: loss}} of a Loop's history."""
  history = loop.history
  train_loss = next(m for m in history.metrics_for_mode('train')
                    if 'CrossEntropy' in m or 'loss' in m.lower())
  return {kind: {int(step): float(value)
                 for step, value in history.get(kind, metric)}
          for kind, metric in (('train', train_loss),
                               ('eval', 'metrics/loss'))}


def _child(output_dir, port=None, process_id=None):
  """Trains as the module docstring says (in a child with the devices; with
  a port, process process_id of two); prints the losses as JSON."""
  # pylint: disable=g-import-not-at-top
  import jax
  from trax_favor.run import cli
  from trax_favor.run import distributed
  if port is not None:  # before anything starts the backend
    distributed.initialize(f'127.0.0.1:{port}', 2, int(process_id),
                           several_devices=True)
  cli.quiet_start()
  from trax_favor.run import configs
  from trax_favor.run import training
  # pylint: enable=g-import-not-at-top

  def run(steps, n, subdirectory):
    configs.parse_config([CONFIG], SMALL + [f'train.steps={steps}'])
    return training.train(os.path.join(output_dir, subdirectory),
                          log_every=100, sequence_parallel=n)

  report = {'devices': jax.local_device_count(),
            'processes': jax.process_count()}
  if jax.process_count() == 2:  # 2 x 2 devices: a (2, 2) mesh over both
    report['split'] = _losses(run(SPLIT_STEPS, 2, 'job'))
  elif jax.local_device_count() == 4:
    report['data'] = _losses(run(SPLIT_STEPS, None, 'data'))
    report['split_data'] = _losses(run(SPLIT_STEPS, 2, 'split_data'))
    report['split'] = _losses(run(SPLIT_STEPS, 4, 'split'))
    resumed = run(RESUMED_STEPS, None, 'split')
    report['resumed_from'] = resumed.resumed_from
    report['resumed'] = _losses(resumed)
  else:
    report['reference'] = _losses(run(RESUMED_STEPS, None, 'reference'))
  print(json.dumps(report))


@pytest.fixture(scope='module')
def trainings(tmp_path_factory):
  """The 4-device and the 1-device child, run side by side."""
  split, reference = _reports(
      _start_children(4, tmp_path_factory.mktemp('split')),
      _start_children(1, tmp_path_factory.mktemp('reference')))
  return split, reference


def _close(a, b):
  return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


@pytest.mark.slow
def test_split_training_equals_one_device_and_resumes_without_flag(trainings):
  """On 4 devices: each sequence split in four (a (1, 4) mesh), in two with
  the batch split over two such pairs (a (2, 2) mesh), and not at all
  (trax's data parallelism over the 4). Each follows the 1-device run."""
  split, reference = trainings
  assert split['devices'] == 4 and reference['devices'] == 1
  expected = reference['reference']
  for name in ('split', 'split_data', 'data'):
    for kind in ('train', 'eval'):
      got = split[name][kind]
      assert sorted(got) == [str(s) for s in range(1, SPLIT_STEPS + 1)], got
      for step, loss in got.items():
        assert _close(loss, expected[kind][step]), (kind, step, loss,
                                                    expected)
  # The split run's checkpoint, resumed without the flag (data parallel).
  assert split['resumed_from'].endswith(f'step_{SPLIT_STEPS:08d}'), split
  step = str(RESUMED_STEPS)
  for kind in ('train', 'eval'):
    got = split['resumed'][kind][step]
    assert _close(got, expected[kind][step]), (kind, got, expected[kind])


@pytest.mark.slow
def test_two_processes_split_their_sequences_as_one_device(trainings,
                                                           tmp_path):
  """2 processes x 2 devices, --sequence_parallel=2: one (2, 2) mesh over
  both (each sequence split within a process, the batch across them);
  both processes' losses follow the 1-device run."""
  reference = trainings[1]['reference']
  reports = _reports(_start_children(2, tmp_path / 'job', n_processes=2))
  assert [(r['processes'], r['devices']) for r in reports] == [(2, 2)] * 2
  for report in reports:
    for kind in ('train', 'eval'):
      got = report['split'][kind]
      assert sorted(got) == [str(s) for s in range(1, SPLIT_STEPS + 1)], got
      for step, loss in got.items():
        assert _close(loss, reference[kind][step]), (kind, step, loss)


if __name__ == '__main__':
  _child(*sys.argv[1:])
