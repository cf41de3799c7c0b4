"""A run directory holding a crafted checkpoint: resume and sampling stop
with one line (exit 2, no traceback), run nothing from it, and leave the
directory as it was: no fallback to an older checkpoint, nothing set aside.
"""

import hashlib
import os
import pathlib
import pickle
import subprocess
import sys

import pytest

import gin_helpers
from trax_favor import safe_pickle
from trax_favor import sample
from trax_favor import train
from trax_favor.run import checkpoints
from trax_favor.run import checkpoints as checkpoint_files
from trax_favor.run import configs
from trax_favor.run import files
from trax_favor.run import run_dir
from trax_favor.run import training

REPO = gin_helpers.REPO
CONFIG = os.path.join(REPO, 'gin', 'offline_default.gin')
SMALL = ['D_MODEL=32', 'SEQUENCE_LENGTH=64', 'N_LAYERS=1', 'BATCH_SIZE=4',
         'N_RANDOM_FEATURES=16', 'STEPS=2', 'train.eval_frequency=1',
         'train.eval_steps=1', 'trax_favor.PerformerLM.d_ff=64',
         'trax_favor.PerformerLM.d_qk=16', 'trax_favor.PerformerLM.d_v=16',
         'trax_favor.PerformerLM.n_heads=2',
         'trax_favor.FavorSelfAttention.chunk_size=16']


class Call:
  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return (self.fn, self.args)


def _record(step, history):
  return {'step': step, 'flat_weights': 2, 'slots_per_task': 2,
          'flat_state': [], 'flat_eval_state': [], 'history': history,
          'input_signature': None, 'version_timestamp': 'Mar-10-2021'}


def _publish(output_dir, step, record):
  """A checkpoint whose manifest matches its (crafted) files."""
  def write(directory):
    stem = os.path.join(directory, 'model')
    checkpoint_files.write_arrays([], f'{stem}.weights.npy.gz')
    checkpoint_files.write_arrays([], f'{stem}.opt_slots0.npy.gz')
    checkpoint_files.write_pickle(record, f'{stem}.pkl.gz')
  checkpoint_files.publish(str(output_dir), checkpoint_files.step_name(step),
                           write, {'step': step, 'rng': [0, 0],
                                   'data': {'train': [0], 'eval': [0]}})


def _snapshot(output_dir):
  """{path: SHA-256} of everything in output_dir (the lock file's content,
  the PID of whoever last tried, left out)."""
  found = {}
  for path in sorted(pathlib.Path(output_dir).rglob('*')):
    name = str(path.relative_to(output_dir))
    if path.is_dir() or path.name == run_dir.LOCK:
      found[name] = None
    else:
      found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
  return found


def _argv(output_dir):
  return ([f'--config_file={CONFIG}', f'--output_dir={output_dir}']
          + [f'--config={b}' for b in SMALL])


def _error_line(capsys, main, argv):
  with pytest.raises(SystemExit) as done:
    main(argv)
  assert done.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and '\n' not in err, err
  return err


@pytest.fixture(name='crafted')
def fixture_crafted(tmp_path):
  """A run whose newest checkpoint (step 4) would run `touch ran`; the one
  before it (step 2) is harmless."""
  marker = tmp_path / 'ran'
  output_dir = tmp_path / 'run'
  _publish(output_dir, 2, _record(2, {}))
  _publish(output_dir, 4, _record(4, Call(os.system, f'touch {marker}')))
  (output_dir / run_dir.LOCK).write_text('1\n')
  return output_dir, marker


@pytest.mark.parametrize('main', [train.main, sample.main],
                         ids=['train', 'sample'])
def test_the_cli_stops_at_a_crafted_checkpoint(main, crafted, capsys):
  output_dir, marker = crafted
  before = _snapshot(output_dir)
  err = _error_line(capsys, main, _argv(output_dir))
  assert 'step_00000004/model.pkl.gz: refused global posix.system' in err
  assert not marker.exists()
  assert _snapshot(output_dir) == before  # nothing renamed, deleted, written


def test_restore_stops_at_a_crafted_checkpoint(crafted):
  output_dir, marker = crafted
  configs.parse_config([CONFIG], SMALL)
  with pytest.raises(safe_pickle.UnsafeCheckpoint, match='posix.system'):
    checkpoints.restore(str(output_dir))
  assert not marker.exists()


def test_resume_reads_trax_data_counters_safely(tmp_path, capsys):
  """Every trax Loop unpickles output_dir/data_counters0.pkl on start."""
  marker = tmp_path / 'ran'
  (tmp_path / 'data_counters0.pkl').write_bytes(
      pickle.dumps(Call(os.system, f'touch {marker}')))
  before = _snapshot(tmp_path)
  err = _error_line(capsys, train.main, _argv(tmp_path))
  assert 'data_counters0.pkl: refused global posix.system' in err
  assert not marker.exists()
  after = _snapshot(tmp_path)
  assert after == {**before, run_dir.LOCK: None}


# -- end to end: a trained run whose newest checkpoint was replaced -----------
@pytest.mark.slow
def test_a_replaced_checkpoint_stops_train_and_sample(tmp_path, capsys):
  """Trains 2 steps, replaces the newest model.pkl.gz by a record whose
  history runs `touch ran` and rewrites the manifest to match; the train
  and sample command lines (their mains, in this process) exit 2 with one
  line, change nothing."""
  output_dir, marker = tmp_path / 'run', tmp_path / 'ran'
  configs.parse_config([CONFIG], SMALL)
  training.train(str(output_dir), log_every=1)
  newest = pathlib.Path(checkpoint_files.steps(output_dir)[0][1])
  record = checkpoint_files.read_pickle(str(newest / 'model.pkl.gz'))
  record['history'] = Call(os.system, f'touch {marker}')
  checkpoint_files.write_pickle(record, str(newest / 'model.pkl.gz'))
  manifest = files.load_json(str(newest / checkpoint_files.MANIFEST))
  for name in manifest['files']:
    data = (newest / name).read_bytes()
    manifest['files'][name] = {'bytes': len(data),
                               'sha256': hashlib.sha256(data).hexdigest()}
  files.save_json(manifest, str(newest / checkpoint_files.MANIFEST))
  checkpoint_files.verify(str(newest))  # whole, as far as the manifest says
  before = _snapshot(output_dir)
  capsys.readouterr()
  for main in (train.main, sample.main):
    err = _error_line(capsys, main, _argv(output_dir))  # exit 2, one line
    assert 'refused global posix.system' in err
    assert f'{newest.name}/model.pkl.gz' in err
    assert not marker.exists()
    assert _snapshot(output_dir) == before


@pytest.mark.slow
def test_the_stock_trainer_stops_at_a_crafted_checkpoint(tmp_path):
  """`python -m trax_favor.trax_trainer` restores through trax's own
  reader, which compat.safe_unpickling routes through safe_pickle."""
  marker = tmp_path / 'ran'
  output_dir = tmp_path / 'stock'
  output_dir.mkdir()
  checkpoint_files.write_pickle(_record(2, Call(os.system, f'touch {marker}')),
                                str(output_dir / 'model.pkl.gz'))
  before = _snapshot(output_dir)
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run(
      [sys.executable, '-m', 'trax_favor.trax_trainer',
       '--config_file=gin/offline_default.gin', f'--output_dir={output_dir}']
      + [f'--config={b}' for b in SMALL], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert 'model.pkl.gz: refused global posix.system' in errors[0]
  assert result.stderr.rstrip().endswith(errors[0])  # the last line
  assert not marker.exists()
  assert {k: v for k, v in _snapshot(output_dir).items()
          if k in before} == before
