"""Install trax_favor: `pip install -c constraints.txt .` (see README)."""

import os

import setuptools
from setuptools.command import build_py

_PTH = 'trax_favor.pth'


class BuildPyWithPth(build_py.build_py):
  """Also puts trax_favor.pth at the top of site-packages.

  The .pth line installs trax_favor's import hook at interpreter start, so
  that trax gets its compatibility fixes however it is imported (for example
  `python -m trax.trainer`, which fails at import without them). The hook
  itself imports nothing heavy; see trax_favor/compat.py.
  """

  def run(self):
    super().run()
    self.copy_file(os.path.join('trax_favor', _PTH),
                   os.path.join(self.build_lib, _PTH))


setuptools.setup(
    name='trax_favor',
    version='0.1.0',
    description="Performer's FAVOR+ attention as a first-class Trax layer.",
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['trax_favor', 'trax_favor.*']),
    package_data={'trax_favor': [_PTH]},
    python_requires='>=3.10',
    install_requires=[
        'trax==1.4.1',
        'jax',
        'jaxlib',
        'gin-config',
        'tensorflow-datasets',
        'numpy',
        'matplotlib',
    ],
    extras_require={
        'test': ['pytest', 'pytest-xdist', 'nbclient', 'nbformat',
                 'ipykernel'],
        # NVIDIA GPUs: JAX's CUDA 12 plugin, pinned by constraints.txt to
        # the jaxlib version (a plugin of another version is not used).
        'gpu': ['jax[cuda12]'],
    },
    entry_points={'console_scripts': [
        'trax-favor-train = trax_favor.train:main',
        'trax-favor-sample = trax_favor.sample:main',
    ]},
    cmdclass={'build_py': BuildPyWithPth},
)
