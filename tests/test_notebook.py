"""The quickstart notebook runs headless, top to bottom, as in Colab: its
cells assert that error falls with m, that training lowers bits/dim, and
that predict-mode sampling matches the eval model."""

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys

import nbclient
import nbformat
import pytest

import gin_helpers
from trax_favor.run import checkpoints as checkpoint_files

NOTEBOOK = os.path.join(gin_helpers.REPO, 'notebooks',
                        'trax_favor_quickstart.ipynb')


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch, xla_cache_dir):
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', xla_cache_dir)
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
  assert checkpoint_files.steps(str(work / 'runs' / 'notebook'))


def _install_cell():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  source = notebook.cells[1].source
  assert source.startswith('# Install (one cell).'), source[:80]
  return source


@pytest.mark.parametrize('gpu', [False, True])
def test_install_cell_clones_and_installs_where_trax_favor_is_missing(
    tmp_path, monkeypatch, gpu):
  """What the install cell runs in a fresh Colab runtime (the headless run
  above has trax_favor installed, so there the cell installs nothing): a
  clone of TRAX_FAVOR_REPO, then pip with constraints.txt, with the gpu
  extra (JAX's CUDA plugin) where nvidia-smi exists."""
  calls = []

  def fake_run(args, check):
    assert check
    calls.append(list(args))
    if args[:2] == ['git', 'clone']:
      (tmp_path / args[-1]).mkdir()

  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('TRAX_FAVOR_REPO', 'https://example.org/trax_favor.git')
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'trax_favor' else 1)
  monkeypatch.setattr(shutil, 'which', lambda name: (
      '/usr/bin/nvidia-smi' if gpu and name == 'nvidia-smi' else None))
  monkeypatch.setattr(subprocess, 'run', fake_run)
  exec(_install_cell(), {})  # pylint: disable=exec-used
  assert calls == [
      ['git', 'clone', '-q', 'https://example.org/trax_favor.git',
       'trax_favor'],
      [sys.executable, '-m', 'pip', 'install', '-q', '-c', 'constraints.txt',
       '.[gpu]' if gpu else '.']]
  assert os.getcwd() == str(tmp_path / 'trax_favor')


def test_install_cell_without_a_repository_says_what_to_set(tmp_path,
                                                            monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('TRAX_FAVOR_REPO', '')
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'trax_favor' else 1)
  monkeypatch.setattr(subprocess, 'run', lambda *a, **k: pytest.fail(
      f'ran {a} with no repository to install from'))
  with pytest.raises(ValueError, match='set TRAX_FAVOR_REPO'):
    exec(_install_cell(), {})  # pylint: disable=exec-used


def test_gpu_extra_gets_the_cuda_plugin_of_the_pinned_jaxlib():
  """`pip install -c constraints.txt '.[gpu]'` must pull JAX's CUDA plugin
  at jaxlib's version: jax does not use a plugin of another version (it
  falls back to the CPU), so the pins must move together."""
  requires = importlib.metadata.requires('trax_favor')
  assert 'jax[cuda12]; extra == "gpu"' in requires, requires
  with open(os.path.join(gin_helpers.REPO, 'constraints.txt')) as f:
    pins = dict(line.strip().split('==') for line in f
                if '==' in line and not line.startswith('#'))
  versions = {name: pins.get(name) for name in (
      'jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda12-pjrt')}
  assert len(set(versions.values())) == 1 and None not in versions.values(), (
      versions)
