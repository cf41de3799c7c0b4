"""Training never loses or silently corrupts a run: a killed, stopped or
damaged run resumes from its newest whole checkpoint and follows the
uninterrupted run's trajectory (every eval, to float tolerance)."""

import json
import os
import pathlib
import shutil
import signal

import numpy as np
import pytest
from trax.supervised import callbacks

from trax_favor.run import checkpoints
from trax_favor.run import checkpoints as checkpoint_files
from trax_favor.run import configs
from trax_favor.run import interrupts
from trax_favor.run import training

STEPS = 12
SHRINK = [  # the offline default at a few seconds per run; eval every step
    'D_MODEL=32', 'SEQUENCE_LENGTH=64', 'N_LAYERS=1', 'BATCH_SIZE=4',
    'N_RANDOM_FEATURES=16', f'STEPS={STEPS}', 'train.eval_frequency=1',
    'train.eval_steps=1', 'train.checkpoints_at=[4, 8]',
    'trax_favor.PerformerLM.d_ff=64', 'trax_favor.PerformerLM.d_qk=16',
    'trax_favor.PerformerLM.d_v=16', 'trax_favor.PerformerLM.n_heads=2',
    'trax_favor.FavorSelfAttention.chunk_size=16',
]


class Crash(BaseException):
  """What a kill -9 leaves on disk: everything up to here, nothing more."""


def _at_step(step, action):
  class AtStep(callbacks.TrainingStepCallback):
    def call_at(self, n):
      return n == step

    def on_step_begin(self, n):
      pass

    def on_step_end(self, n):
      action()
  return AtStep


def _crash():
  raise Crash()


def _train(output_dir, *extra, callbacks_=(), **kwargs):
  configs.parse_config([os.path.join(configs_dir(), 'offline_default.gin')],
                       SHRINK + list(extra))
  return training.train(str(output_dir), log_every=4, callbacks=callbacks_,
                        **kwargs)


def configs_dir():
  return os.path.join(os.path.dirname(os.path.dirname(__file__)), 'gin')


def _evals(output_dir):
  return training.read_eval_history(str(output_dir))['loss']


@pytest.fixture(name='uninterrupted', scope='module')
def fixture_uninterrupted(tmp_path_factory):
  output_dir = tmp_path_factory.mktemp('uninterrupted')
  _train(output_dir)
  return output_dir


def _assert_same_trajectory(output_dir, reference):
  evals, expected = _evals(output_dir), _evals(reference)
  assert [s for s, _ in evals] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([v for _, v in evals], [v for _, v in expected],
                             rtol=1e-6)


def test_resume_after_a_kill_and_after_sigterm_follows_the_uninterrupted_run(
    tmp_path, uninterrupted, capsys):
  """Killed at step 6 (checkpoint at 4, its eval already run); the rerun
  restores weights, slots, step, random key and data positions, reruns the
  eval the checkpoint preceded, removes the debris of killed writes. That
  rerun is stopped by SIGTERM at step 9: it saves after the step, exits
  143's way and restores the signal handler; the next rerun finishes. The
  evals follow the uninterrupted run's."""
  with pytest.raises(Crash):
    _train(tmp_path, callbacks_=[_at_step(6, _crash)])
  assert [s for s, _ in checkpoint_files.steps(tmp_path)] == [4]
  debris = [tmp_path / 'checkpoints' / '.step_00000008.tmp999',
            tmp_path / 'progress.jsonl._tmp_']
  debris[0].mkdir()
  debris[1].write_text('partial')
  capsys.readouterr()
  with pytest.raises(interrupts.Interrupted) as stopped:
    _train(tmp_path, callbacks_=[_at_step(
        9, lambda: os.kill(os.getpid(), signal.SIGTERM))])
  out = capsys.readouterr().out
  assert 'at step 4' in out and 'running its eval' in out
  assert not any(p.exists() for p in debris)
  assert stopped.value.signum == signal.SIGTERM
  assert interrupts.exit_code(stopped.value) == 143
  assert checkpoint_files.steps(tmp_path)[0][0] == 9
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
  _train(tmp_path)
  _assert_same_trajectory(tmp_path, uninterrupted)


@pytest.fixture(name='two_checkpoints')
def fixture_two_checkpoints(tmp_path, uninterrupted):
  """A copy of the uninterrupted run: its checkpoints 12 and 8 (the newest
  two are kept)."""
  output_dir = tmp_path / 'run'
  shutil.copytree(uninterrupted, output_dir)
  assert [s for s, _ in checkpoint_files.steps(output_dir)] == [12, 8]
  return output_dir


def _checkpoint_dirs(output_dir):
  return [pathlib.Path(p) for _, p in checkpoint_files.steps(output_dir)]


def _damage(path, how, other):
  weights = path / 'model.weights.npy.gz'
  if how == 'random bytes':
    weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
  elif how == 'truncated slots':
    slots = path / 'model.opt_slots0.npy.gz'
    slots.write_bytes(slots.read_bytes()[:slots.stat().st_size // 2])
  elif how == 'file of another checkpoint':
    shutil.copy(other / 'model.weights.npy.gz', weights)
  elif how == 'no manifest':
    (path / checkpoint_files.MANIFEST).unlink()


DAMAGES = ['random bytes', 'truncated slots', 'file of another checkpoint',
           'no manifest']


@pytest.mark.parametrize('how', DAMAGES)
def test_a_damaged_checkpoint_is_never_loaded(two_checkpoints, how):
  newest, older = _checkpoint_dirs(two_checkpoints)
  checkpoint_files.verify(newest)
  _damage(newest, how, older)
  with pytest.raises(checkpoint_files.DamagedCheckpoint):
    checkpoint_files.verify(newest)
  assert checkpoints.latest(str(two_checkpoints)) == str(
      older / checkpoints.CHECKPOINT)


def test_a_damaged_checkpoint_falls_back_to_the_one_before(
    two_checkpoints, uninterrupted, capsys):
  newest = _checkpoint_dirs(two_checkpoints)[0]
  _damage(newest, 'random bytes', None)
  capsys.readouterr()
  _train(two_checkpoints)
  out = capsys.readouterr().out
  assert 'damaged checkpoint' in out and 'model.weights.npy.gz' in out
  assert 'step_00000008 (the newest whole one) at step 8' in out
  assert os.path.isdir(f'{newest}.damaged')  # kept as evidence
  _assert_same_trajectory(two_checkpoints, uninterrupted)


def test_without_a_whole_checkpoint_the_run_stops(two_checkpoints):
  for path in _checkpoint_dirs(two_checkpoints):
    _damage(path, 'truncated slots', None)
  with pytest.raises(configs.RunError, match='no whole checkpoint.*opt_slots0'):
    _train(two_checkpoints)


def test_a_manifest_with_a_wrong_random_key_falls_back(two_checkpoints,
                                                       uninterrupted, capsys):
  newest = _checkpoint_dirs(two_checkpoints)[0]
  manifest = newest / checkpoint_files.MANIFEST
  record = json.loads(manifest.read_text())
  manifest.write_text(json.dumps({**record, 'rng': 'abc'}))  # valid JSON
  capsys.readouterr()
  _train(two_checkpoints)
  out = capsys.readouterr().out
  assert 'no valid random key and data positions' in out
  assert 'step_00000008 (the newest whole one) at step 8' in out
  _assert_same_trajectory(two_checkpoints, uninterrupted)


def test_a_reader_whose_checkpoint_is_pruned_reads_the_next_newest(
    two_checkpoints, monkeypatch):
  """A trainer pruning the checkpoint a sampler just chose: the sampler
  reads the newest one left, never a traceback."""
  newest, older = _checkpoint_dirs(two_checkpoints)
  configs.parse_config([os.path.join(configs_dir(), 'offline_default.gin')],
                       SHRINK)
  chosen = checkpoints.latest(str(two_checkpoints))
  latest = checkpoints.latest
  calls = []

  def pruned_after_choosing(output_dir):
    calls.append(output_dir)
    if len(calls) == 1:
      shutil.rmtree(newest)  # what RunDir.save_checkpoint's pruning does
      return chosen
    return latest(output_dir)
  monkeypatch.setattr(checkpoints, 'latest', pruned_after_choosing)
  model = checkpoints.restore(str(two_checkpoints), mode='eval')
  assert len(calls) == 2 and model.weights is not None
  assert chosen.startswith(str(newest)) and not newest.exists()
  assert checkpoint_files.steps(str(two_checkpoints))[0][1] == str(older)
