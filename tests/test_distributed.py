"""Two processes x one CPU device on JAX's distributed runtime (127.0.0.1),
each a `python -m trax_favor.train` under its supervisor: they stay
bit-identical at every step, equal the one-process run with the same global
batch, write one set of files, stop together on a signal and resume
together; their faults are one line and a prompt exit. Every test here
starts trainings: all are in the slow set."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from trax_favor.run import checkpoints as checkpoint_files
from trax_favor.run import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds per phase; a hang fails the test, not CI


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(run_dir, bindings, coordinator=None, index=None, timeout=120):
  """`python -m trax_favor.train` of the offline default with bindings; with
  a coordinator, process `index` of a two-process job."""
  command = [sys.executable, '-u', '-m', 'trax_favor.train',
             f'--config_file={REPO}/gin/offline_default.gin',
             f'--output_dir={run_dir}', '--log_every=1',
             *[f'--config={b}' for b in bindings]]
  if coordinator is not None:
    command += [f'--coordinator_address={coordinator}', '--num_processes=2',
                f'--process_id={index}', f'--distributed_timeout={timeout}']
  return command


def _env(**extra):
  env = dict(os.environ, **{'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO,
                            **extra})
  # One device per process; other flags (CI's optimization level) stay.
  flags = [f for f in env.pop('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  if flags:
    env['XLA_FLAGS'] = ' '.join(flags)
  return env


# The shrunk offline default, evaluated every step (the training loss per
# step in the history), a checkpoint at step 2, a schedule that does not
# depend on train.steps (which the resume changes); every process saves
# its weights after every step (tests/distributed_dumps.py).
DUMPED = ('D_MODEL=32', 'SEQUENCE_LENGTH=32', 'N_LAYERS=1', 'BATCH_SIZE=4',
          'N_RANDOM_FEATURES=16', 'train.eval_frequency=1',
          'train.eval_steps=1', 'train.checkpoints_at=[2]',
          'trax_favor.PerformerLM.d_ff=64', 'trax_favor.PerformerLM.d_qk=16',
          'trax_favor.PerformerLM.d_v=16', 'trax_favor.PerformerLM.n_heads=2',
          'trax_favor.FavorSelfAttention.chunk_size=16',
          'multifactor.steps_per_cycle=8', 'import distributed_dumps')


def _dumping(run_dir, dumps, steps, coordinator=None, index=None):
  """A training that saves its weights after every step into `dumps`."""
  dumps.mkdir(exist_ok=True)
  return subprocess.Popen(
      _command(run_dir, DUMPED + (f'train.steps={steps}',), coordinator,
               index),
      env=_env(PYTHONPATH=f'{REPO}{os.pathsep}{REPO}/tests',
               TRAX_FAVOR_TEST_DUMPS=str(dumps)),
      text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_all(processes):
  """Each child's output; on a timeout kills them all (by handle)."""
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=TIMEOUT)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  return outputs


def _weights(dumps, process, step):
  return np.load(dumps / f'p{process}_step{step}.npy')


def _losses(dumps, process):
  return json.loads((dumps / f'p{process}_losses.json').read_text())


@pytest.mark.slow
def test_two_processes_train_as_one_stop_together_and_resume(tmp_path):
  """SIGTERM to process 1 (its supervisor forwards it): the flag travels
  with the next step, both stop after it (exit 143), process 0 saves that
  step's checkpoint. Both then resume from process 0's files for two more
  steps, while one process trains as many steps on the same global batch.
  At every step the two processes' weights are bit-identical and equal the
  one process's; process 0 alone writes the run's files."""
  run_dir, pair, reference = tmp_path / 'run', tmp_path / 'pair', (
      tmp_path / 'reference')
  coordinator = f'127.0.0.1:{_free_port()}'
  processes = [_dumping(run_dir, pair, 200, coordinator, i) for i in range(2)]
  outputs = ['', '']
  try:
    for line in processes[1].stdout:
      outputs[1] += line
      if line.startswith('step 3/'):
        processes[1].send_signal(signal.SIGTERM)
    outputs[0] = processes[0].communicate(timeout=TIMEOUT)[0]
    processes[1].wait(timeout=TIMEOUT)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  assert [p.returncode for p in processes] == [143, 143], outputs
  stopped = [int(out.split('interrupted at step ')[1].split(':')[0])
             for out in outputs]
  assert stopped[0] == stopped[1] >= 3, stopped
  assert checkpoint_files.steps(str(run_dir))[0][0] == stopped[0]

  end = stopped[0] + 2
  coordinator = f'127.0.0.1:{_free_port()}'
  resumed = _wait_all(
      [_dumping(run_dir, pair, end, coordinator, i) for i in range(2)]
      + [_dumping(tmp_path / 'reference_run', reference, end)])[:2]
  for step in range(1, end + 1):
    np.testing.assert_array_equal(_weights(pair, 0, step),
                                  _weights(pair, 1, step))
    np.testing.assert_allclose(_weights(pair, 0, step),
                               _weights(reference, 0, step), rtol=1e-5,
                               atol=1e-5)
  # Every step in the run's records and the training losses of the
  # history (restored on resume), but for the stop's step, which may have
  # none (the stop came before its record and its eval).
  every = list(range(1, end + 1))
  but_stop = [s for s in every if s != stopped[0]]
  losses, expected = _losses(pair, 0), dict(_losses(reference, 0))
  assert [s for s, _ in losses] in (every, but_stop)
  assert sorted(expected) == every
  np.testing.assert_allclose([v for _, v in losses],
                             [expected[s] for s, _ in losses], rtol=1e-5)
  assert _losses(pair, 1) == losses
  assert [s for s, _ in checkpoint_files.steps(run_dir)] == [end,
                                                             stopped[0]]
  steps = [r['step'] for r in training.read_progress(str(run_dir))]
  assert steps in (every, but_stop)
  lines = open(run_dir / 'progress.jsonl').read().splitlines()
  assert len(lines) == len(steps)  # one writer: no step recorded twice
  evals = training.read_eval_history(str(run_dir))['loss']
  assert [s for s, _ in evals] == every
  for output in resumed:  # each process resumed from process 0's files
    assert f'step_{stopped[0]:08d}' in output, output[-3000:]


# Faults of a multi-process job (docs/reliability.md): one line, a prompt
# exit, never a hang or XLA's native abort.

TINY = ('D_MODEL=32', 'SEQUENCE_LENGTH=32', 'N_LAYERS=1', 'BATCH_SIZE=4',
        'N_RANDOM_FEATURES=16', 'train.eval_steps=1')
NATIVE = ('Fatal Python error', '*** Begin stack trace', 'SIGABRT',
          'Traceback')


def _train_process(run_dir, coordinator, index, extra=(), timeout=120):
  return subprocess.Popen(
      _command(run_dir, TINY + tuple(extra), coordinator, index, timeout),
      env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process, timeout):
  """(rc, stdout, stderr, seconds); kills the child (by handle) past
  timeout and fails."""
  start = time.monotonic()
  try:
    out, err = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    out, err = process.communicate()
    pytest.fail(f'no exit within {timeout} s: {out[-2000:]} {err[-2000:]}')
  return process.returncode, out, err, time.monotonic() - start


def _one_line(err):
  lines = [l for l in err.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, err[-3000:]
  assert not any(n in err for n in NATIVE), err[-3000:]
  return lines[0]


@pytest.mark.slow
def test_different_configs_refused_on_every_process(tmp_path):
  coordinator = f'127.0.0.1:{_free_port()}'
  processes = [
      _train_process(tmp_path / 'run', coordinator, 0, ['STEPS=2']),
      _train_process(tmp_path / 'run', coordinator, 1,
                     ['STEPS=2', 'N_RANDOM_FEATURES=8'])]
  results = [_finish(p, 120) for p in processes]
  for rc, _, err, _ in results:
    assert rc != 0
    line = _one_line(err)
    assert 'different configs' in line and 'N_RANDOM_FEATURES' in line, line
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.slow
@pytest.mark.parametrize('victim', [1, 0])
def test_sigkill_of_one_process_stops_the_other_with_one_line(tmp_path,
                                                              victim):
  """A process killed after the step-2 checkpoint (process 0 is the
  coordinator): the other exits within 60 s with one line naming what it
  lost; the checkpoint stays whole."""
  coordinator = f'127.0.0.1:{_free_port()}'
  run_dir = tmp_path / 'run'
  extra = ['STEPS=400', 'train.eval_frequency=100', 'train.checkpoints_at=[2]']
  processes = [_train_process(run_dir, coordinator, i, extra)
               for i in range(2)]
  survivor = processes[1 - victim]
  try:
    for line in survivor.stdout:
      if line.startswith('step 4/'):  # step 2's checkpoint is published
        break
    processes[victim].kill()
    processes[victim].wait()
    rc, _, err, seconds = _finish(survivor, 60)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  assert rc != 0 and seconds < 60, (rc, seconds)
  line = _one_line(err)
  assert f'process {1 - victim}:' in line, line
  assert 'process 1' in line if victim else 'process 0' in line, line
  assert checkpoint_files.steps(str(run_dir))[0][0] >= 2
  assert os.path.exists(checkpoint_files.latest(str(run_dir)))


@pytest.mark.slow
def test_absent_coordinator_gives_up_within_the_timeout(tmp_path):
  process = _train_process(tmp_path / 'run', f'127.0.0.1:{_free_port()}', 1,
                           ['STEPS=2'], timeout=10)
  rc, _, err, seconds = _finish(process, 40)
  assert rc != 0 and seconds < 35, (rc, seconds)
  assert 'could not join the coordinator' in _one_line(err)


@pytest.mark.slow
def test_busy_coordinator_port_is_one_line(tmp_path):
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
    busy.bind(('127.0.0.1', 0))
    busy.listen()
    coordinator = f'127.0.0.1:{busy.getsockname()[1]}'
    process = _train_process(tmp_path / 'run', coordinator, 0, ['STEPS=2'],
                             timeout=10)
    rc, _, err, _ = _finish(process, 40)
  assert rc != 0
  assert 'in use' in _one_line(err)
