"""`python -m trax_favor.train --sequence_parallel=N`: training and eval with
every sequence split over N devices.

JAX fixes its device count when the backend starts, so the trainings run in
child interpreters (this file as a script, XLA_FLAGS forcing 1 or 2 host
devices) that train the offline default config shrunk and report JSON:

  split      2 devices, --sequence_parallel=2: steps 1-3 (an eval at each
             step); then the same run directory resumed WITHOUT the flag
             (trax's data parallelism over the 2 devices) for step 4;
  reference  1 device, no flag: steps 1-4.

The split run's per-step train and eval losses equal the reference's to
1e-4 relative, and so does step 4 of its resume without the flag (its
checkpoint loads either way: the wrapper adds no weight). The refusals
that need no second device run in this process (fast).
"""

import json
import os
import subprocess
import sys

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


def test_sequence_parallel_with_several_processes_is_one_line(tmp_path,
                                                               capsys):
  err = _error_line(capsys, _argv(
      tmp_path, '--sequence_parallel=2', '--num_processes=2',
      '--process_id=0', '--coordinator_address=localhost:1'))
  assert 'not supported yet' in err and '--num_processes=2' in err, err


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


def _setup(n, n_data):
  """A Setup's checks without a mesh (one device here)."""
  setup = object.__new__(sequence_parallel.Setup)
  setup.n, setup.n_data = n, n_data
  return setup


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
def _run_child(n_devices, output_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={n_devices}')
  process = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(output_dir)], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    stdout, stderr = process.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    process.kill()
    process.communicate()
    pytest.fail(f'the {n_devices}-device child ran over {TIMEOUT} s')
  if process.returncode != 0:
    pytest.fail(f'the {n_devices}-device child failed:\n{stderr[-4000:]}')
  return json.loads(stdout.strip().splitlines()[-1])


def _losses(loop):
  """{'train' and 'eval': {step: loss}} of a Loop's history."""
  history = loop.history
  train_loss = next(m for m in history.metrics_for_mode('train')
                    if 'CrossEntropy' in m or 'loss' in m.lower())
  return {kind: {int(step): float(value)
                 for step, value in history.get(kind, metric)}
          for kind, metric in (('train', train_loss),
                               ('eval', 'metrics/loss'))}


def _child(output_dir):
  """Trains as the module docstring says (in a child with the devices);
  prints the losses as JSON."""
  # pylint: disable=g-import-not-at-top
  import jax
  from trax_favor.run import cli
  cli.quiet_start()
  from trax_favor.run import configs
  from trax_favor.run import training
  # pylint: enable=g-import-not-at-top

  def run(steps, n):
    configs.parse_config([CONFIG], SMALL + [f'train.steps={steps}'])
    loop = training.train(output_dir, log_every=100, sequence_parallel=n)
    return loop

  report = {'devices': jax.local_device_count()}
  if jax.local_device_count() == 2:
    report['split'] = _losses(run(SPLIT_STEPS, 2))
    resumed = run(RESUMED_STEPS, None)
    report['resumed_from'] = resumed.resumed_from
    report['resumed'] = _losses(resumed)
  else:
    report['reference'] = _losses(run(RESUMED_STEPS, None))
  print(json.dumps(report))


@pytest.fixture(scope='module')
def trainings(tmp_path_factory):
  split = _run_child(2, tmp_path_factory.mktemp('split'))
  reference = _run_child(1, tmp_path_factory.mktemp('reference'))
  return split, reference


def _close(a, b):
  return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


@pytest.mark.slow
def test_split_training_equals_one_device_and_resumes_without_flag(trainings):
  split, reference = trainings
  assert split['devices'] == 2 and reference['devices'] == 1
  expected = reference['reference']
  for kind in ('train', 'eval'):
    got = split['split'][kind]
    assert sorted(got) == [str(s) for s in range(1, SPLIT_STEPS + 1)], got
    for step, loss in got.items():
      assert _close(loss, expected[kind][step]), (kind, step, loss, expected)
  # The split run's checkpoint, resumed without the flag (data parallel).
  assert split['resumed_from'].endswith(f'step_{SPLIT_STEPS:08d}'), split
  step = str(RESUMED_STEPS)
  for kind in ('train', 'eval'):
    got = split['resumed'][kind][step]
    assert _close(got, expected[kind][step]), (kind, got, expected[kind])


if __name__ == '__main__':
  _child(sys.argv[1])
