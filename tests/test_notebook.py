"""The quickstart notebook runs headless, top to bottom, as in Colab: its
cells assert that error falls with m, that training lowers bits/dim, and
that predict-mode sampling matches the eval model."""

import os

import nbclient
import nbformat

import gin_helpers

NOTEBOOK = os.path.join(gin_helpers.REPO, 'notebooks',
                        'trax_favor_quickstart.ipynb')


def test_quickstart_notebook_executes(tmp_path, monkeypatch, pytestconfig):
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(
      pytestconfig.cache.mkdir('xla_compilation_cache')))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  # Run from a copy of the notebooks/ folder's place so the notebook's own
  # chdir to the repository root is exercised, writing runs/ under tmp_path.
  work = tmp_path / 'repo'
  (work / 'notebooks').mkdir(parents=True)
  for name in ('gin', 'results'):
    os.symlink(os.path.join(gin_helpers.REPO, name), work / name)
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': str(work / 'notebooks')}})
  client.execute()  # raises CellExecutionError on any failing cell
  outputs = ''.join(output.get('text', '') for cell in notebook.cells
                    if cell.cell_type == 'code' for output in cell.outputs)
  assert 'relative error against exact causal softmax attention' in outputs
  assert 'max |p_predict - p_eval|' in outputs
  assert (work / 'runs' / 'notebook' / 'model.pkl.gz').exists()
