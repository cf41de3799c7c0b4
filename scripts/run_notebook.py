"""Runs the quickstart notebook headless, top to bottom, as Colab would.

    python scripts/run_notebook.py [--out executed.ipynb]

Every cell checks what it shows, so a failing check stops the run with that
cell's error. Needs the `test` extra (nbclient, nbformat, ipykernel).
"""

import argparse
import os
import sys

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'trax_favor_quickstart.ipynb')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=None,
                      help='write the executed notebook (with outputs) here')
  args = parser.parse_args(argv)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=900, kernel_name='python3',
      resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}})
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    print(f'error: a notebook cell failed:\n{e}', file=sys.stderr)
    return 1
  if args.out:
    nbformat.write(notebook, args.out)
  print(f'all {len(notebook.cells)} cells ran and passed their checks')
  return 0


if __name__ == '__main__':
  sys.exit(main())
