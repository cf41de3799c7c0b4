"""Install trax_favor: `pip install -c constraints.txt .` (see README)."""

import setuptools

setuptools.setup(
    name='trax_favor',
    version='0.1.0',
    description="Performer's FAVOR+ attention as a first-class Trax layer.",
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    license_files=['LICENSE'],
    classifiers=[
        'Development Status :: 3 - Alpha',
        'Intended Audience :: Science/Research',
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3.11',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    # The library only: benchmarks/, experiments/, docs/ and notebooks/ sit
    # beside it in the repository and are not installed.
    packages=setuptools.find_packages(include=['trax_favor', 'trax_favor.*']),
    python_requires='>=3.10',
    install_requires=[
        'trax==1.4.1',
        'jax',
        'jaxlib',
        'gin-config',
        'tensorflow-datasets',
        'numpy',
        'matplotlib',  # PNG input and output of trax-favor-sample
    ],
    extras_require={
        'test': ['pytest', 'pytest-xdist', 'nbclient', 'nbformat',
                 'ipykernel', 'matplotlib'],
        # The benchmark and experiment scripts beside the package; torch
        # and performer-pytorch for the peer benchmark (constraints.txt
        # pins torch 2.13.0; see README for its CPU-only build).
        'benchmarks': ['matplotlib', 'torch', 'performer-pytorch'],
        # `tensorboard --logdir runs` reads a run's event files.
        'tensorboard': ['tensorboard'],
        # NVIDIA GPUs: JAX's CUDA 12 plugin, pinned by constraints.txt to
        # the jaxlib version (a plugin of another version is not used).
        'gpu': ['jax[cuda12]'],
    },
    entry_points={'console_scripts': [
        'trax-favor-train = trax_favor.train:main',
        'trax-favor-sample = trax_favor.sample:main',
        'trax-favor-trax-trainer = trax_favor.trax_trainer:main',
    ]},
)
