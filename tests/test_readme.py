"""The README's Python snippets run as written, in fresh interpreters: the
model snippet in either import order without a Python warning, and the
decoding recipe on a (shrunk) run of the offline default."""

import os
import re
import subprocess
import sys

import gin
import pytest

import gin_helpers

pytestmark = pytest.mark.slow

README = os.path.join(gin_helpers.REPO, 'README.md')
PYTHON_WARNING = re.compile(r'\b[A-Z][A-Za-z]*Warning: ')


def _snippets():
  with open(README) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), re.S)


def _python(code, cwd):
  env = dict(os.environ, PYTHONPATH=gin_helpers.REPO)
  return subprocess.run([sys.executable, '-W', 'always', '-c', code],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600, check=False)


BUILT = "\nprint('built', type(model).__name__)\n"
SHOW = "\nprint('decoded', tokens.shape, tokens.tolist())\n"


@pytest.fixture(name='recipe_run', scope='module')
def fixture_recipe_run(tmp_path_factory):
  """One interpreter, trax imported first (as the recipe does): the
  decoding recipe on a (shrunk) run of the offline default, twice, then
  the model snippet."""
  from trax_favor.run import configs  # pylint: disable=g-import-not-at-top
  from trax_favor.run import training  # pylint: disable=g-import-not-at-top
  work = tmp_path_factory.mktemp('recipe')
  os.symlink(os.path.join(gin_helpers.REPO, 'gin'), work / 'gin')
  # The model shrunk alike in the run and in the recipe; one step.
  model = ['D_MODEL=32', 'SEQUENCE_LENGTH=64', 'N_LAYERS=1',
           'trax_favor.PerformerLM.d_ff=64']
  configs.parse_config(
      [os.path.join(gin_helpers.REPO, 'gin/offline_default.gin')],
      model + ['STEPS=1', 'BATCH_SIZE=2', 'train.eval_frequency=1',
               'train.eval_steps=1'])
  training.train(str(work / 'runs' / 'default'))
  gin.clear_config()
  recipe = _snippets()[1]
  assert 'weights_only=True' in recipe and 'load_projections' in recipe
  assert recipe.index('import trax\n') < recipe.index('import trax_favor')
  shrink = ('_parse = configs.parse_config\n'
            f'configs.parse_config = lambda files: _parse(files, {model!r})\n')
  imports = 'from trax_favor.run import checkpoints, configs\n'
  assert imports in recipe
  code = recipe.replace(imports, imports + shrink)
  # Without the load_projections line, init_from_file takes the projections
  # from the checkpoint's state (compat's init_from_file_projections): the
  # same tokens (one interpreter runs both, each building its own model).
  implicit = code.replace(shrink, '').replace(  # shrunk once is enough
      'trax_favor.load_projections(model, checkpoint)', 'pass')
  assert implicit != code
  return _python(code + SHOW + implicit + SHOW + _snippets()[0] + BUILT,
                 str(work))


@pytest.mark.parametrize('order', ['as_written', 'trax_first'])
def test_model_snippet_runs_in_either_import_order(order, tmp_path,
                                                   request):
  code = _snippets()[0]
  assert 'import trax_favor' in code and 'ReformerLM' in code
  if order == 'trax_first':  # after the decoding recipe, which imports trax
    result = request.getfixturevalue('recipe_run')
  else:
    result = _python(code + BUILT, str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'built Serial' in result.stdout
  assert not PYTHON_WARNING.search(result.stderr), result.stderr[-3000:]


def test_decoding_recipe_runs_on_a_training_run(recipe_run):
  assert recipe_run.returncode == 0, recipe_run.stderr[-3000:]
  decoded = [l for l in recipe_run.stdout.splitlines()
             if l.startswith('decoded')]
  assert len(decoded) == 2 and decoded[0].startswith('decoded (1, 20)')
  assert decoded[1] == decoded[0]
