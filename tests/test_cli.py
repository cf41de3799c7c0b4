"""The training and sampling entry points, as a user runs them: progress,
resume after kill -9, sampling (predict == eval), errors."""

import importlib
import os
import signal
import subprocess
import sys

import gin
import matplotlib.image
import numpy as np
import pytest
from trax.supervised import training

import gin_helpers
from trax_favor import decoding
from trax_favor.run import checkpoints
from trax_favor.run import checkpoints as checkpoint_files
from trax_favor.run import configs
from trax_favor.run import training as favor_training

REPO = gin_helpers.REPO
TEXT_CONFIG = 'gin/offline_default.gin'
STEPS = 24
SHRINK = [  # the offline default at a few seconds per run
    'D_MODEL=32', 'SEQUENCE_LENGTH=64', 'N_LAYERS=1', 'BATCH_SIZE=4',
    'N_RANDOM_FEATURES=16', f'STEPS={STEPS}',  # a macro, as users set it
    'train.eval_frequency=4', 'train.eval_steps=1',
    'trax_favor.PerformerLM.d_ff=64', 'trax_favor.PerformerLM.d_qk=16',
    'trax_favor.PerformerLM.d_v=16', 'trax_favor.PerformerLM.n_heads=2',
    'trax_favor.FavorSelfAttention.chunk_size=16',
]

# Every test here runs the command lines end to end: in fresh processes,
# but for the errors, which end before anything is trained or sampled
# (their main in this process: the same exit code and stderr).
pytestmark = pytest.mark.slow


def _env(cache_dir, **extra):
  return dict(os.environ, PYTHONPATH=REPO,
              JAX_COMPILATION_CACHE_DIR=str(cache_dir), **extra)


def _command(module, output_dir, *flags, config=TEXT_CONFIG, bindings=SHRINK):
  return ([sys.executable, '-u', '-m', module, f'--config_file={config}',
           f'--output_dir={output_dir}']
          + [f'--config={b}' for b in bindings] + list(flags))


def _run(command, env, timeout=600):
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def _run_here(command, capsys):
  """(exit code, stderr) of a command line from _command that exits, its
  module's main run in this process (from the repository root: in_repo)."""
  assert command[1:3] == ['-u', '-m']
  main = importlib.import_module(command[3]).main
  capsys.readouterr()
  with pytest.raises(SystemExit) as done:
    main(command[4:])
  return done.value.code, capsys.readouterr().err


@pytest.fixture(name='text_run', scope='module')
def fixture_text_run(tmp_path_factory, xla_cache_dir):
  """Trains via the CLI, kill -9 mid-run, reruns the same command."""
  output_dir = tmp_path_factory.mktemp('text_run')
  command = _command('trax_favor.train', output_dir, '--log_every=2')
  env = _env(xla_cache_dir)
  first = subprocess.Popen(command, cwd=REPO, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  lines = []
  for line in first.stdout:  # wait for a checkpoint (step 8), then kill
    lines.append(line)
    if line.startswith(('step 10/', 'step 11/', 'step 12/')):
      first.send_signal(signal.SIGKILL)
      break
  first.wait(timeout=60)
  assert first.returncode == -signal.SIGKILL, ''.join(lines)[-3000:]
  # What a kill during a checkpoint write leaves behind: a partial temp file.
  (output_dir / 'model.weights.npy.gz._tmp_').write_bytes(b'\x1f\x8b partial')
  second = _run(command, env)
  assert second.returncode == 0, second.stderr[-3000:]
  return output_dir, ''.join(lines), second.stdout


def test_training_resumes_after_kill_9(text_run):
  output_dir, first, second = text_run
  assert 'steps/s, ETA' in first
  assert 'resuming from' in second
  resumed_at = int(second.split(' at step ')[1].split()[0])
  assert resumed_at > 1 and resumed_at % 4 == 0  # a checkpoint step
  assert f'done: step {STEPS}/{STEPS}' in second
  checkpoint = training.unpickle_from_file(
      checkpoints.latest(str(output_dir)), gzip=True)
  assert checkpoint['step'] == STEPS
  assert 'bits_per_dim' in second
  for name in ('config.gin', 'operative_config.gin'):
    assert 'trax_favor.PerformerLM' in (output_dir / name).read_text()
  for mode in ('train', 'eval'):
    assert any(f.startswith('events.out.tfevents')
               for f in os.listdir(output_dir / mode))


@pytest.mark.parametrize('signum,code', [(signal.SIGTERM, 143),
                                         (signal.SIGINT, 130)],
                         ids=['sigterm', 'sigint'])
def test_a_signal_saves_a_checkpoint_and_exits_128_plus_it(
    tmp_path, xla_cache_dir, signum, code):
  command = _command('trax_favor.train', tmp_path, '--log_every=1')
  env = _env(xla_cache_dir)
  run = subprocess.Popen(command, cwd=REPO, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    lines = []
    for line in run.stdout:
      lines.append(line)
      if line.startswith('step 6/'):
        run.send_signal(signum)
    run.wait(timeout=120)
  finally:
    run.kill()
  out = ''.join(lines)
  assert run.returncode == code, out[-3000:]
  assert 'stopped by' not in out  # the saved checkpoint is the one line
  stopped_at = int(out.split('interrupted at step ')[1].split(':')[0])
  assert stopped_at >= 6
  assert checkpoint_files.steps(str(tmp_path))[0][0] == stopped_at
  if signum == signal.SIGINT:
    return  # the resume is the same after either signal
  second = _run(command, env)
  assert f'at step {stopped_at}' in second.stdout
  assert f'done: step {STEPS}/{STEPS}' in second.stdout


def test_sampling_in_predict_mode_equals_the_eval_model(text_run):
  output_dir, _, _ = text_run
  configs.parse_config([os.path.join(REPO, TEXT_CONFIG)], SHRINK)
  model = checkpoints.restore(str(output_dir), mode='predict')
  state_shapes = checkpoints._shapes(model.state)  # pylint: disable=protected-access
  prompt = np.frombuffer(b'import os\n', np.uint8).astype(np.int32)
  generated, log_probs = decoding.sample(model, prompt, 14, temperature=1.0,
                                         seed=3)
  assert checkpoints._shapes(model.state) == state_shapes  # O(1) in decoded length  # pylint: disable=protected-access
  sequence = np.concatenate([prompt, generated])[None]  # (1, 24)
  evaluator = checkpoints.restore(str(output_dir), mode='eval')
  logits = np.asarray(evaluator(sequence))[0]
  want = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  np.testing.assert_allclose(log_probs, want, rtol=1e-4, atol=1e-4)


def test_sampling_stops_where_the_position_table_ends(text_run):
  # Past max_len trax's positional encoding would clamp its read and give
  # every later token the last position, silently.
  output_dir, _, _ = text_run
  configs.parse_config([os.path.join(REPO, TEXT_CONFIG)], SHRINK)
  model = checkpoints.restore(str(output_dir), mode='predict')
  assert decoding.positions_left(model) == 64  # SEQUENCE_LENGTH=64
  prompt = np.arange(1, 11, dtype=np.int32)
  with pytest.raises(ValueError, match='65 positions, but the model has 64'):
    decoding.sample(model, prompt, 55)
  generated, _ = decoding.sample(model, prompt, 54, temperature=0.0)
  assert len(generated) == 54 and decoding.positions_left(model) == 0
  with pytest.raises(ValueError, match='1 positions, but the model has 0'):
    decoding.sample(model, [], 1)
  assert decoding.positions_left(checkpoints.restore(str(output_dir),
                                              mode='eval')) is None


def test_sampling_cli_continues_a_prompt(text_run, xla_cache_dir, in_repo,
                                        capsys):
  del in_repo
  output_dir, _, _ = text_run
  result = _run(_command('trax_favor.sample', output_dir, '--prompt=def ',
                         '--length=12', '--temperature=0'),
                _env(xla_cache_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith('def ') and len(result.stdout) >= 12
  # 4 prompt bytes and 61 more: one past the 64 positions, one clear line.
  code, err = _run_here(_command('trax_favor.sample', output_dir,
                                 '--prompt=def ', '--length=61'), capsys)
  assert code == 2
  assert 'larger max_len' in err and 'Traceback' not in err, err[-3000:]


def test_image_completion_to_png(tmp_path, xla_cache_dir):
  """Tiny ImageNet64 Performer (mocked data), then the sampling CLI."""
  config = 'gin/imagenet64/performer_tiny.gin'
  gin_helpers.parse(config, shrink=False)
  gin.bind_parameter('train.steps', 1)  # a second would compile again
  gin.bind_parameter('train.eval_frequency', 1)
  with gin_helpers.mocked_tfds():
    favor_training.train(str(tmp_path / 'run'), log_every=1)
  prompt = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(
      np.uint8)
  matplotlib.image.imsave(tmp_path / 'prompt.png', prompt)
  result = _run(_command('trax_favor.sample', tmp_path / 'run',
                         f'--image={tmp_path / "prompt.png"}',
                         '--prompt_rows=4', f'--png={tmp_path / "out.png"}',
                         config=config, bindings=[]), _env(xla_cache_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.round(matplotlib.image.imread(tmp_path / 'out.png')[..., :3]
                 * 255).astype(np.uint8)
  assert out.shape == (8, 16, 3)  # prompt | completion
  np.testing.assert_array_equal(out[:, :8], prompt)
  np.testing.assert_array_equal(out[:4, 8:], prompt[:4])  # rows kept


@pytest.mark.parametrize('module, config, bindings, message', [
    ('trax_favor.train', 'gin/missing.gin', [], 'config file not found'),
    ('trax_favor.train', 'gin/pg19/performer_tiny.gin',
     ["trax_favor.pg19_inputs.data_dir='/nonexistent/tfds'"],
     'download_and_prepare'),
    ('trax_favor.sample', 'gin/pg19/performer_tiny.gin', [],
     'where it shapes the model'),
], ids=['missing_config', 'missing_dataset', 'changed_model'])
def test_errors_are_one_clear_line(module, config, bindings, message,
                                   text_run, in_repo, tmp_path, capsys):
  del in_repo
  output_dir = text_run[0] if module == 'trax_favor.sample' else tmp_path
  code, err = _run_here(_command(module, output_dir, config=config,
                                 bindings=bindings), capsys)
  assert code == 2
  assert message in err and 'Traceback' not in err, err[-3000:]


def test_the_stock_trainer_help_lists_its_flags_and_exits_0(xla_cache_dir):
  result = _run([sys.executable, '-m', 'trax_favor.trax_trainer', '--help'],
                _env(xla_cache_dir), timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  for flag in ('--config_file', '--config:', '--output_dir'):
    assert flag in result.stdout
