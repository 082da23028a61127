"""gkd_t5x: Generalized Knowledge Distillation (on-policy distillation) in JAX/Flax, T5X style."""

import setuptools

# Versions tested together on CPU (Python 3.11); t5x itself is not on PyPI (see README).
# Every distribution the code imports is named here, also where another one brings it today:
# tensorflow 2.21 stopped bringing tensorboard, which clu's metric writers import
# (tests/test_dependencies.py checks the code's imports against this list).
INSTALL_REQUIRES = [
    # The core: model, objective, train step (what the accelerator machines have, and gin).
    'jax==0.10.2',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'chex==0.1.92',
    'gin-config==0.5.0',
    'numpy==2.4.6',
    'absl-py==2.5.1',
    'etils[epath]==1.15.0',
    # Data, evaluation, metrics and metric writers.
    'seqio==0.0.20',
    'tensorflow==2.21.0',
    'tensorflow-text==2.21.1',
    'tensorflow-datasets==4.9.10',
    'clu==0.0.12',
    'tensorboard==2.21.0',
    'rouge-score==0.1.2',
    'sacrebleu==2.6.0',
    # Figures.
    'matplotlib==3.11.2',
]

setuptools.setup(
    name='gkd_t5x',
    version='0.1.0',
    description=__doc__,
    python_requires='>=3.10',
    # `tasks/` sits at the top level of the repository but installs as `gkd_t5x.tasks`, so that
    # it never claims the generic module name `tasks` in a user's environment.
    packages=['gkd_t5x', 'gkd_t5x.tasks'],
    package_dir={'gkd_t5x': 'gkd_t5x', 'gkd_t5x.tasks': 'tasks'},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # scipy and tensorstore are independent references in tests (log-softmax; T5X's
        # checkpoint format); pyink and ruff check the style (pyproject.toml) before the tests.
        'test': [
            'pytest==9.0.3',
            'pytest-xdist==3.8.0',
            'scipy==1.17.1',
            'tensorstore==0.1.86',
            'pyink==26.5.1',
            'ruff==0.17.6',
        ],
        # gkd_t5x.fit: libtpu's compiler for TPU topologies on any host, the version that jax's
        # own `tpu` extra names (jax 0.10.2: libtpu==0.0.42.*).
        'tpu-compile': ['libtpu==0.0.42.*'],
        # benchmarks/compare_trl.py: our GKD step against TRL's GKDTrainer step (PyTorch on CPU).
        'bench': ['torch==2.13.0', 'transformers==5.17.0', 'trl==1.13.0'],
        # What t5x, airio and jestimator import beyond the pins above. They are not on PyPI:
        # install them with --no-deps from the commits the README names.
        't5x': ['fiddle==0.3.1', 'cached-property==2.0.1', 'grain==0.2.12', 'tensorstore==0.1.86'],
    },
)
