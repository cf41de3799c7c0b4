"""Two processes x one CPU device on JAX's distributed runtime (127.0.0.1):
they stay bit-identical at every step, equal the one-process run with the
same global batch, write one set of files, and resume together."""

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
CHILD = os.path.join(REPO, 'tests', 'distributed_child.py')
TIMEOUT = 300  # seconds per phase; a hang fails the test, not CI


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(args, log):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)  # one device per process
  return subprocess.Popen([sys.executable, CHILD, *map(str, args)],
                          stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait_all(processes, logs):
  """Waits for every child; on a timeout kills them all (by handle)."""
  try:
    for process in processes:
      process.wait(timeout=TIMEOUT)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log.read_text()[-3000:]


def _pair(tmp_path, name, steps, run_dir, dumps):
  coordinator = f'127.0.0.1:{_free_port()}'
  logs = [tmp_path / f'{name}{i}.log' for i in range(2)]
  processes = [_start([run_dir, dumps, steps, coordinator, 2, i],
                      open(log, 'w')) for i, log in enumerate(logs)]
  return processes, logs


def _weights(dumps, process, step):
  return np.load(dumps / f'p{process}_step{step}.npy')


@pytest.fixture(name='runs', scope='module')
def fixture_runs(tmp_path_factory):
  """(pair dumps, reference dumps, pair run dir): the pair trains 3 steps
  and resumes to 5; the reference trains 5 steps in one process."""
  tmp = tmp_path_factory.mktemp('distributed')
  pair, reference, run_dir = tmp / 'pair', tmp / 'reference', tmp / 'run'
  pair.mkdir()
  reference.mkdir()
  processes, logs = _pair(tmp, 'first', 3, run_dir, pair)
  ref_log = tmp / 'reference.log'
  processes.append(_start([tmp / 'ref_run', reference, 5], open(ref_log, 'w')))
  _wait_all(processes, logs + [ref_log])
  processes, logs = _pair(tmp, 'resumed', 5, run_dir, pair)
  _wait_all(processes, logs)
  return pair, reference, run_dir, logs


def test_processes_stay_bit_identical_and_equal_one_process(runs):
  pair, reference, _, _ = runs
  for step in range(1, 6):
    np.testing.assert_array_equal(_weights(pair, 0, step),
                                  _weights(pair, 1, step))
    np.testing.assert_allclose(_weights(pair, 0, step),
                               _weights(reference, 0, step), rtol=1e-5,
                               atol=1e-5)
  losses = {name: json.loads((d / f'p0_losses_5.json').read_text())
            for name, d in (('pair', pair), ('reference', reference))}
  assert [s for s, _ in losses['pair']] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([v for _, v in losses['pair']],
                             [v for _, v in losses['reference']], rtol=1e-5)
  assert losses['pair'] == json.loads((pair / 'p1_losses_5.json').read_text())


def test_one_process_writes_and_both_resume_from_it(runs):
  _, _, run_dir, resumed_logs = runs
  assert [s for s, _ in checkpoint_files.steps(run_dir)] == [5, 3]
  steps = [r['step'] for r in training.read_progress(str(run_dir))]
  assert steps == [1, 2, 3, 4, 5]  # one writer: no step recorded twice
  lines = open(run_dir / 'progress.jsonl').read().splitlines()
  assert len(lines) == 5
  evals = training.read_eval_history(str(run_dir))['loss']
  assert [s for s, _ in evals] == [1, 2, 3, 4, 5]
  for log in resumed_logs:  # each process resumed from process 0's files
    assert 'step_00000003' in log.read_text()


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_after_one_step(tmp_path):
  """SIGTERM to process 1: the flag travels with the next step, both stop
  after it (exit 143), process 0 saves that step's checkpoint."""
  coordinator = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)
  command = [sys.executable, '-u', '-m', 'trax_favor.train',
             f'--config_file={REPO}/gin/offline_default.gin',
             f'--output_dir={tmp_path / "run"}', '--log_every=1',
             f'--coordinator_address={coordinator}', '--num_processes=2',
             *[f'--config={b}' for b in (
                 'D_MODEL=32', 'SEQUENCE_LENGTH=32', 'N_LAYERS=1',
                 'BATCH_SIZE=4', 'N_RANDOM_FEATURES=16', 'STEPS=200',
                 'train.eval_frequency=100', 'train.eval_steps=1')]]
  processes = [subprocess.Popen(command + [f'--process_id={i}'], env=env,
                                text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT) for i in range(2)]
  outputs = ['', '']
  try:
    for line in processes[1].stdout:
      outputs[1] += line
      if line.startswith('step 5/'):
        processes[1].send_signal(signal.SIGTERM)
    outputs[0] = processes[0].communicate(timeout=TIMEOUT)[0]
    processes[1].wait(timeout=TIMEOUT)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  assert [p.returncode for p in processes] == [143, 143], outputs
  stopped = [int(out.split('interrupted at step ')[1].split(':')[0])
             for out in outputs]
  assert stopped[0] == stopped[1] >= 5
  assert checkpoint_files.steps(str(tmp_path / 'run'))[0][0] == stopped[0]


# Faults of a multi-process job (docs/reliability.md): one line, a prompt
# exit, never a hang or XLA's native abort.

TINY = ('D_MODEL=32', 'SEQUENCE_LENGTH=32', 'N_LAYERS=1', 'BATCH_SIZE=4',
        'N_RANDOM_FEATURES=16', 'train.eval_steps=1')
NATIVE = ('Fatal Python error', '*** Begin stack trace', 'SIGABRT',
          'Traceback')


def _train_process(run_dir, coordinator, index, extra=(), timeout=120):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)
  command = [sys.executable, '-u', '-m', 'trax_favor.train',
             f'--config_file={REPO}/gin/offline_default.gin',
             f'--output_dir={run_dir}', '--log_every=1',
             f'--coordinator_address={coordinator}', '--num_processes=2',
             f'--process_id={index}', f'--distributed_timeout={timeout}',
             *[f'--config={b}' for b in TINY + tuple(extra)]]
  return subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)


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
