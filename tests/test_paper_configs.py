"""The paper's experiments as configuration: gin/experiments/ and launch/sweeps/paper/.

(a) Every paper sweep spec (launch/sweeps/paper/*.json, one per figure panel) expands with
    `launch/sweep.py` into the runs it describes (references + points x seeds), prints them,
    and a few runs carry exactly the bindings the paper's figure needs.
(b) Every gin file under gin/experiments/ (the paper's tasks and the arithmetic quickstart), and
    every distinct training and evaluation config of every paper spec (its gin files and
    bindings, the seed and output directories aside), parses under BOTH runners' run files:
    gin/runs/train.gin / eval.gin (this project's trainer and evaluator) and
    gin/runs/t5x_finetune.gin / t5x_eval.gin (T5X's; skipped where t5x is not importable).
    Each config is finalized, and the arguments its entry point would receive are built with
    `gin.get_bindings` (so every macro and reference resolves, and nothing the run reads is
    left at %gin.REQUIRED); the built model, objective, data and optimizer settings are then
    compared with the paper's tables (A.1-A.4) and with what each run's labels name, and every
    task or mixture name must be registered in seqio by `gkd_t5x.tasks`.

Nothing is built at full size and nothing is downloaded: flax modules are lazy (building
`GKDModel` with a T5-XL teacher allocates no parameter), no dataset is read, no checkpoint is
opened, and the T5 SentencePiece vocabulary (read from GCS on first use) is replaced, by a gin
file written here, with a small `seqio.PassThroughVocabulary`.

The configs are parsed by the gin probe (tests/gin_probe.py: one subprocess for all of them,
T5X's run files parsed as under `python -m t5x.<kind>`), every binding checked against the
entry points' real signatures (no `skip_unknown`). The T5X-only binding
`utils.RestoreCheckpointConfig.mode` of the specs is dropped for this project's runner.
"""

import importlib.util
import json
import pathlib
import re
import shlex

import gin_probe
import pytest
from spec_labels import DIVERGENCES
from spec_labels import check_divergence
from spec_labels import check_method

from launch import plan
from launch import spec as spec_lib
from launch import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]

PAPER_SPECS = sorted((ROOT / 'launch' / 'sweeps' / 'paper').glob('*.json'))
EXPERIMENT_FILES = sorted(
    str(path.relative_to(ROOT)) for path in (ROOT / 'gin' / 'experiments').rglob('*.gin')
)
HAS_T5X = importlib.util.find_spec('t5x') is not None
# Files parsed after an experiment's own to change some of its settings (not runnable alone).
OVERLAY_FILES = (
    'gin/experiments/arithmetic/reproduction.gin',
    'gin/experiments/arithmetic/from_sft.gin',
    'gin/experiments/arithmetic/chain5.gin',
    'gin/experiments/arithmetic/chain5_reproduction.gin',
    'gin/experiments/arithmetic/chain5_recovery.gin',
    'gin/experiments/arithmetic/chain5_recovery_budget.gin',
    'gin/experiments/arithmetic/sum3_recovery.gin',
    'gin/experiments/arithmetic/sum3_testbed_budget.gin',
    'gin/experiments/arithmetic/mixture.gin',
    'gin/experiments/arithmetic/two_teachers.gin',
)
SWEEP_ROOT = '/sweeps'
# Files that read data a command writes first, refused without it: file -> the macro naming it.
NEEDS_WRITTEN_DATA = {'gin/experiments/arithmetic/offline_kd.gin': 'OFFLINE_TEACHER_DIR'}

# Spec name -> (runner, references, points, seeds): runs = references + points x seeds.
EXPECTED_SPECS = {
    'paper_fig1_xsum': ('t5x', 4, 3 * 3, 1),
    'paper_fig1_wmt': ('t5x', 4, 3 * 3, 3),
    'paper_fig1_gsm8k': ('t5x', 4, 3 * 3, 3),
    'paper_fig2_xsum_temperature': ('t5x', 2, 5, 1),
    'paper_fig2_xsum_greedy': ('t5x', 2, 5, 1),
    'paper_fig3_xsum_data_efficiency': ('t5x', 2, 4 * 4, 1),
    'paper_fig5_xsum_rlef': ('gkd_t5x', 4, 2 * 4, 1),
    'paper_fig4_xsum_quality_diversity': ('gkd_t5x', 2, 5, 1),
    'paper_fig6_wmt_small': ('t5x', 2, 15, 3),
    'paper_fig6_wmt_base': ('t5x', 2, 15, 3),
    'paper_fig7_gsm8k_base': ('t5x', 2, 15, 3),
    'paper_fig8_gsm8k_lambda': ('t5x', 2, 5 * 2, 3),
    'paper_fig9_gsm8k_small': ('t5x', 2, 6, 3),
    'paper_fig9_gsm8k_base': ('t5x', 2, 6, 3),
    'paper_fig9_gsm8k_large': ('t5x', 2, 6, 3),
    'paper_figA10_gsm8k_self_distillation': ('t5x', 2, 5, 3),
    'paper_figA11_flan': ('t5x', 2, 5, 1),
    'paper_figA12_xsum_small': ('t5x', 2, 15, 1),
    'paper_figA12_xsum_base': ('t5x', 2, 15, 1),
    'paper_figA12_xsum_large': ('t5x', 2, 15, 1),
    'paper_figA13_xsum_small': ('t5x', 2, 15, 1),
    'paper_figA13_xsum_base': ('t5x', 2, 15, 1),
    'paper_figA13_xsum_large': ('t5x', 2, 15, 1),
    'paper_figA14_gsm8k_small': ('t5x', 2, 15, 3),
    'paper_figA14_gsm8k_large': ('t5x', 2, 15, 3),
    'paper_figA15_wmt': ('t5x', 3, 2 * 3, 3),
}

# The paper's tables: A.1 XSum, A.3 WMT, A.2 GSM8K, A.4 FLAN.
TABLES = {
    'xsum': dict(
        task='xsum',
        lengths={'inputs': 1024, 'targets': 64},
        batch=32,
        steps=40000,
        dropout=0.0,
        lr=0.0003,
        warmup=2000,
        cooldown=(30000, 40000),
        teacher_temperature=1.0,
        split='validation',
        decode='greedy',
        start='T5_1_1_LM_ADAPTED',
    ),
    'wmt': dict(
        task='wmt_t2t_ende_v003',
        lengths={'inputs': 80, 'targets': 80},
        batch=32,
        steps=100000,
        dropout=0.0,
        lr=0.0003,
        warmup=5000,
        cooldown=None,
        teacher_temperature=1.0,
        split='validation',
        decode='beam',
        start='T5_1_1_LM_ADAPTED',
    ),
    'gsm8k': dict(
        task='gsm8k',
        lengths={'inputs': 512, 'targets': 320},
        batch=32,
        steps=40000,
        dropout=0.05,
        lr=0.0003,
        warmup=2000,
        cooldown=(30000, 40000),
        teacher_temperature=0.1,
        split='test',
        decode='greedy',
        start='FLAN_T5',
    ),
    'flan': dict(
        task='flan2021',
        lengths={'inputs': 2048, 'targets': 256},
        batch=128,
        steps=50000,
        dropout=0.0,
        lr=0.0001,
        warmup=0,
        cooldown=None,
        teacher_temperature=1.0,
        split='validation',
        decode='greedy',
        start='FLAN_T5',
    ),
}
SFT_STEPS = {  # paper A.3
    'xsum': {'small': 100000, 'base': 50000, 'large': 38000, 'xl': 8000},
    'wmt': {'small': 250000, 'base': 250000, 'large': 110000, 'xl': 50000},
    'gsm8k': {'small': 10000, 'base': 10000, 'large': 10000, 'xl': 10000},
}
CHECKPOINT_STEPS = {
    'T5_1_1_LM_ADAPTED': dict.fromkeys(('small', 'base', 'large', 'xl'), 1100000),
    'FLAN_T5': {'small': 1198000, 'base': 1184000, 'large': 1164000, 'xl': 1138000},
}
SIZE_OF_WIDTH = {512: 'small', 768: 'base', 1024: 'large', 2048: 'xl'}

# The beta of each paper method with a JSD (the rest of each method: spec_labels.METHODS).
PAPER_BETAS = {
    'GKD (on-policy, JSD(0.1))': 0.1,
    'GKD (on-policy, JSD(0.9))': 0.9,
    'GKD (on-policy)': 0.1,  # Fig. 3: JSD(0.1), our choice
    'GKD (supervised)': 0.1,
}

# In place of the T5 vocabulary (read from GCS on first use): a small local one. Its size only
# has to fit the networks' 32128 logits; small, it keeps the calculator's per-token table of
# GSM8K's models (built with the model) cheap.
TINY_VOCAB_GIN = """\
from __gin__ import dynamic_registration
import seqio
VOCABULARY = @seqio.PassThroughVocabulary()
seqio.PassThroughVocabulary.size = 256
"""


# The run file of each runner and kind, parsed before a config's files.
RUN_FILES = {
    'gkd_t5x': {'train': 'gin/runs/train.gin', 'eval': 'gin/runs/eval.gin'},
    't5x': {'train': 'gin/runs/t5x_finetune.gin', 'eval': 'gin/runs/t5x_eval.gin'},
}


def run_helper(configs, vocab_file):
  """Parses `configs` (each under its runner's run files) with the gin probe; one result per
  config."""
  return gin_probe.probe(
      [
          dict(
              config,
              files=[RUN_FILES[config['runner']][config['kind']], *config['files']],
              extra_files=[vocab_file] if config['tiny_vocab'] else [],
          )
          for config in configs
      ]
  )


def task_of(files):
  for path in files:
    match = re.match(r'gin/experiments/(xsum|wmt|gsm8k|flan|arithmetic)/', path)
    if match:
      return match.group(1)
  return None


# ------------------------------------------------------------------------- the configs


# Bindings that only the training reads: an evaluation config is parsed once without them (its
# training config, parsed with them, covers their syntax).
TRAINING_ONLY = (
    'LMBDA',
    'DIVERGENCE',
    'BETA',
    'LEARNING_RATE',
    'TEACHER_TEMPERATURE',
    'TRAIN_STEPS',
)


def _convert(command, runner):
  """(kind, gin files, bindings) of a spec command as `runner` would run it; the seed and the
  output and checkpoint directories are replaced by fixed values, so the configs that differ
  only by them are parsed once."""
  kind = command.kind
  files = list(command.gin_files[1:])
  bindings = []
  for key, value in command.gin_bindings().items():
    if key in ('RANDOM_SEED', 'MODEL_DIR', 'EVAL_OUTPUT_DIR', 'CHECKPOINT_PATH'):
      continue
    if kind == 'eval' and key in TRAINING_ONLY:
      continue
    if runner == 'gkd_t5x' and key.startswith('utils.'):
      continue  # T5X's RestoreCheckpointConfig: not a setting of this project's runner
    if SWEEP_ROOT in value:
      value = "'/sweeps/checkpoint'"
    bindings.append((key, value))
  if any(f.endswith('/rlef.gin') for f in files):
    # The entailment classifier is the user's (no public T5X checkpoint): given with --set.
    bindings.append(('ENTAILMENT_CLASSIFIER_CHECKPOINT', "'/sweeps/classifier'"))
  if kind == 'train':
    bindings.insert(0, ('MODEL_DIR', "'/sweeps/model_dir'"))
  else:
    bindings[:0] = [
        ('CHECKPOINT_PATH', "'/sweeps/checkpoint'"),
        ('EVAL_OUTPUT_DIR', "'/sweeps/eval'"),
    ]
  return kind, files, bindings


def spec_configs(runner):
  """Distinct configs of every paper spec's commands, and where each comes from."""
  configs, uses = {}, []
  for path in PAPER_SPECS:
    spec = spec_lib.load(str(path))
    for run in plan.expand(spec, SWEEP_ROOT):
      for command in run.commands:
        kind, files, bindings = _convert(command, runner)
        key = json.dumps([runner, kind, files, bindings])
        if key not in configs:
          configs[key] = dict(
              runner=runner,
              kind=kind,
              files=files,
              bindings=bindings,
              tiny_vocab=task_of(files) != 'arithmetic',
          )
        uses.append((spec, run, command, dict(bindings), key))
  return configs, uses


def needs_initial_checkpoint(path):
  """The paper's distillation files, which require INITIAL_CHECKPOINT_PATH (paper_base.gin)."""
  return re.fullmatch(r'gin/experiments/(xsum|wmt|gsm8k)/(gkd|rlef)\.gin', path) is not None


def file_configs(runner):
  """Every gin file of gin/experiments/ alone, for training and evaluation, with the output
  directories bound. Include-only files (a base.gin, without a method) are parsed only. A file
  that requires INITIAL_CHECKPOINT_PATH is parsed without it (to see it refused), then with it."""
  configs = []
  for path in EXPERIMENT_FILES:
    common = dict(
        runner=runner,
        files=[path],
        tiny_vocab=task_of([path]) != 'arithmetic',
        partial=path.endswith('base.gin') or path in OVERLAY_FILES,
    )
    for kind, outputs in (
        ('train', [('MODEL_DIR', "'/m'")]),
        ('eval', [('CHECKPOINT_PATH', "'/c'"), ('EVAL_OUTPUT_DIR', "'/e'")]),
    ):
      configs.append(dict(common, kind=kind, bindings=outputs))
      if needs_initial_checkpoint(path):
        configs.append(
            dict(
                common,
                kind=kind,
                with_initial=True,
                bindings=outputs
                + [('INITIAL_CHECKPOINT_PATH', "'/sft_student'")]
                + (
                    [('ENTAILMENT_CLASSIFIER_CHECKPOINT', "'/classifier'")]
                    if path.endswith('/rlef.gin')
                    else []
                ),
            )
        )
  return configs


RUNNERS = ['gkd_t5x', 't5x']


@pytest.fixture(scope='module')
def parsed(tmp_path_factory):
  """runner -> (uses of the spec configs, their results by key, file configs, their results)."""
  vocab_file = tmp_path_factory.mktemp('gin') / 'tiny_vocab.gin'
  vocab_file.write_text(TINY_VOCAB_GIN)
  parts, configs = {}, []
  for runner in RUNNERS:
    if runner == 't5x' and not HAS_T5X:
      continue
    spec_cfgs, uses = spec_configs(runner)
    files = file_configs(runner)
    parts[runner] = (uses, list(spec_cfgs), files, len(configs))
    configs += list(spec_cfgs.values()) + files
  results = run_helper(configs, str(vocab_file))
  out = {}
  for runner, (uses, keys, files, start) in parts.items():
    mine = results[start : start + len(keys) + len(files)]
    out[runner] = (uses, dict(zip(keys, mine[: len(keys)])), files, mine[len(keys) :])
  return out


def _runner_or_skip(parsed, runner):
  if runner not in parsed:
    pytest.skip('t5x is not installed (it is not on PyPI; see the README)')
  return parsed[runner]


# ------------------------------------------------------------------------- (a) expansion


def test_every_figure_panel_has_a_spec():
  names = {path.stem for path in PAPER_SPECS}
  assert names == set(EXPECTED_SPECS)
  for path in PAPER_SPECS:
    assert json.loads(path.read_text())['name'] == path.stem


@pytest.mark.parametrize('path', PAPER_SPECS, ids=lambda p: p.stem)
def test_paper_spec_expands(path, capsys):
  spec = spec_lib.load(str(path))
  runner, num_refs, points, num_seeds = EXPECTED_SPECS[spec.name]
  assert spec.runner.name == runner
  runs = plan.expand(spec, 'gs://bucket/sweeps')
  assert len(spec.seeds) == num_seeds
  assert len(runs) == num_refs + points * num_seeds
  assert [r.reference is not None for r in runs] == [True] * num_refs + [False] * (
      points * num_seeds
  )
  modules = {'t5x': ('t5x.train', 't5x.eval'), 'gkd_t5x': ('gkd_t5x.train', 'gkd_t5x.eval')}
  run_files = {
      't5x': ('gin/runs/t5x_finetune.gin', 'gin/runs/t5x_eval.gin'),
      'gkd_t5x': ('gin/runs/train.gin', 'gin/runs/eval.gin'),
  }
  for run in runs:
    for command in run.commands:
      index = command.kind == 'eval'
      assert command.argv()[:4] == [
          'python',
          '-m',
          modules[runner][index],
          f'--gin_file={run_files[runner][index]}',
      ]
      assert not re.search(r'\{(root|seed|ref:)', ' '.join(command.argv()))
    if run.reference is None:
      # Every distillation run names its student start and its teacher.
      assert {'INITIAL_CHECKPOINT_PATH', 'TEACHER_CHECKPOINT_PATH'} <= set(run.bindings) or (
          spec.name == 'paper_figA11_flan'
      )  # FLAN: the public FLAN-T5 checkpoints
  assert sweep.main([str(path), '--root', 'gs://bucket/sweeps']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [shlex.split(line) for line in lines] == [c.argv() for r in runs for c in r.commands]


def _load(name):
  return spec_lib.load(str(ROOT / 'launch' / 'sweeps' / 'paper' / f'{name}.json'))


def test_fig6_small_grid_runs_and_bindings():
  runs = plan.expand(_load('paper_fig6_wmt_small'), '/r')
  teacher, sft, grid = runs[0], runs[1], runs[2:]
  assert len(grid) == 15 * 3
  assert {(r.labels['lambda'], r.labels['divergence'], r.seed) for r in grid} == {
      (lam, div, seed) for lam in ('1.0', '0.5', '0.0') for div in DIVERGENCES for seed in (0, 1, 2)
  }
  # The references train the WMT SFT teacher (T5-XL, 50K steps) and student from LM-adapted T5.
  assert teacher.commands[0].argv()[4:] == [
      '--gin_file=gin/experiments/wmt/sft.gin',
      "--gin.MODEL_DIR='/r/paper_fig6_wmt_small/ref_teacher'",
      '--gin.STUDENT_CONFIG=%T5_1_1_XL',
      '--gin.INITIAL_CHECKPOINT_PATH=%T5_1_1_LM_ADAPTED_XL_CHECKPOINT',
      '--gin.TRAIN_STEPS=%SFT_STEPS_XL',
  ]
  assert sft.commands[0].argv()[4:] == [
      '--gin_file=gin/experiments/wmt/sft.gin',
      "--gin.MODEL_DIR='/r/paper_fig6_wmt_small/ref_student_sft'",
  ]
  run = next(r for r in grid if r.name.endswith('lambda_0.5__divergence_JSD_0.1/seed_2'))
  assert run.gin_files == ['gin/experiments/wmt/gkd.gin']
  assert run.bindings == {
      'MODEL_DIR': "'/r/paper_fig6_wmt_small/lambda_0.5__divergence_JSD_0.1/seed_2'",
      'RANDOM_SEED': '2',
      'STUDENT_CONFIG': '%T5_1_1_SMALL',
      'INITIAL_CHECKPOINT_PATH': "'/r/paper_fig6_wmt_small/ref_student_sft'",
      'TEACHER_CHECKPOINT_PATH': "'/r/paper_fig6_wmt_small/ref_teacher'",
      'utils.RestoreCheckpointConfig.mode': "'latest'",
      'LMBDA': '0.5',
      'DIVERGENCE': "'jsd'",
      'BETA': '0.1',
  }
  assert run.eval_dirs == {'beam': [run.model_dir + '/eval_beam']}


def test_fig4_evaluations_sample_at_four_temperatures():
  spec = _load('paper_fig4_xsum_quality_diversity')
  runs = plan.expand(spec, '/r')
  rkl = runs[-1]
  assert rkl.labels == {'divergence': 'RKL'}
  # Reverse KL trains small at 0.0003, the other divergences at 0.001 (A.1 text).
  assert rkl.bindings['LEARNING_RATE'] == '0.0003'
  assert runs[2].bindings['LEARNING_RATE'] == '0.001' and runs[2].labels['divergence'] == 'FKL'
  assert rkl.bindings['LMBDA'] == '1.0'
  evals = [c for c in rkl.commands if c.kind == 'eval']
  assert len(evals) == 4 * 4
  for i, command in enumerate(evals):
    temperature, sample = ('0.1', '0.3', '0.5', '1.0')[i // 4], i % 4
    assert command.argv()[-3:] == [
        "--gin.models.GKDModel.decode_method='sample'",
        f'--gin.models.GKDModel.decode_temperature={temperature}',
        f'--gin.RANDOM_SEED={sample}',
    ]
    assert command.output_dir == f'{rkl.model_dir}/eval_T_{temperature}/sample_{sample}'
  assert spec.plots[0].kind == 'quality_diversity'


def test_xsum_temperature_panels_train_with_teacher_temperature_0_1():
  """A.1 note: teacher temperature 0.1 where results are reported with sampling, 1 with greedy."""
  for name, temperature, evaluation in (
      ('paper_fig2_xsum_temperature', '0.1', 'T=1.0'),
      ('paper_fig2_xsum_greedy', '1.0', 'greedy'),
      ('paper_fig3_xsum_data_efficiency', '0.1', 'T=1.0'),
      ('paper_figA12_xsum_base', '0.1', 'T=1.0'),
      ('paper_figA13_xsum_base', '1.0', 'greedy'),
  ):
    spec = _load(name)
    assert spec.bindings['TEACHER_TEMPERATURE'] == temperature, name
    assert [e.label for e in spec.evaluations] == [evaluation], name
  runs = plan.expand(_load('paper_fig3_xsum_data_efficiency'), '/r')
  assert {r.labels['data_percent']: r.bindings['MIXTURE_OR_TASK_NAME'] for r in runs[2:]} == {
      '0.5': "'xsum_train1k'",
      '5': "'xsum_train10k'",
      '25': "'xsum_train50k'",
      '100': "'xsum'",
  }


def test_fig1_sizes_start_from_their_own_sft_student():
  runs = plan.expand(_load('paper_fig1_xsum'), '/r')
  assert [r.reference for r in runs[:4]] == ['teacher', 'sft_small', 'sft_base', 'sft_large']
  for run in runs[4:]:
    size = run.labels['size']
    assert run.bindings['INITIAL_CHECKPOINT_PATH'] == f"'/r/paper_fig1_xsum/ref_sft_{size}'"
    assert run.bindings['STUDENT_CONFIG'] == f'%T5_1_1_{size.upper()}'
    assert run.bindings.get('LEARNING_RATE') == ('0.001' if size == 'small' else None)


def test_fig_a10_and_fig_a11_start_from_public_flan_checkpoints():
  runs = plan.expand(_load('paper_figA10_gsm8k_self_distillation'), '/r')
  teacher, student = runs[:2]
  assert [c.kind for c in teacher.commands] == ['train', 'eval']
  assert [c.kind for c in student.commands] == ['eval']
  assert student.checkpoint == 'gs://t5-data/pretrained_models/t5x/flan_t5_large/checkpoint_1164000'
  for run in runs[2:]:
    assert run.bindings['INITIAL_CHECKPOINT_PATH'] == '%FLAN_T5_LARGE_CHECKPOINT'
    assert run.bindings['TEACHER_CONFIG'] == '%T5_1_1_LARGE'
    # A public step directory: T5X's default 'specific' restore, not the run-directory mode.
    assert 'utils.RestoreCheckpointConfig.mode' not in run.bindings
  runs = plan.expand(_load('paper_figA11_flan'), '/r')
  evaluations = [c.argv() for c in runs[-1].commands if c.kind == 'eval']
  assert [argv[-2:] for argv in evaluations] == [
      ["--gin.EVAL_MIXTURE_OR_TASK_NAME='mmlu'", "--gin.EVAL_SPLIT='test'"],
      ["--gin.EVAL_MIXTURE_OR_TASK_NAME='bbh'", "--gin.EVAL_SPLIT='test'"],
  ]
  assert [r.labels['method'] for r in runs[2:]] == [
      'GKD (on-policy, FKL)',
      'ImitKD',
      'Supervised KD',
      'GKD (supervised, RKL)',
      'GKD (on-policy, RKL)',
  ]


# ------------------------------------------------------------------------- (b) parsing


def _expected_size(bindings, task, default=None):
  value = bindings.get('STUDENT_CONFIG')
  if value:
    return value.split('_')[-1].lower()
  return default or ('base' if task == 'flan' else 'small')


def _check_train(result, task, run, bindings, runner, spec_runner, where):
  table = TABLES[task]
  size = _expected_size(bindings, task)
  assert result['student'] == {v: k for k, v in SIZE_OF_WIDTH.items()}[size], where
  assert result['task'] in (table['task'], 'xsum_train1k', 'xsum_train10k', 'xsum_train50k'), where
  assert (result['batch'], result['lengths'], result['dropout']) == (
      table['batch'],
      table['lengths'],
      table['dropout'],
  ), where
  assert result['eval_split'] == table['split'], where
  assert result['decode']['method'] == table['decode'], where
  # GSM8K's accuracy is "given an external calculator" (A.3): calculator-assisted decoding.
  assert result['decode']['calculator'] == (task == 'gsm8k'), where
  if task == 'wmt':
    assert (result['decode']['beam_size'], result['decode']['beam_alpha']) == (4, 0.6), where
  gkd = result['gkd']
  sft = run.reference is not None
  if sft:  # a reference trains the task SFT of its size from the public checkpoint
    steps = SFT_STEPS[task][size]
    assert (gkd['divergence'], gkd['lmbda'], result['teacher']) == (
        'cross_entropy',
        0.0,
        None,
    ), where
    start = table['start']
    assert result['initial'] == (
        f'gs://t5-data/pretrained_models/t5x/'
        f'{"t5_1_1_lm100k" if start == "T5_1_1_LM_ADAPTED" else "flan_t5"}'
        f'_{size}/checkpoint_{CHECKPOINT_STEPS[start][size]}'
    ), where
    assert result['teacher_path'] is None, where
    lr = table['lr']
  else:
    steps = table['steps']
    teacher = _expected_size({'STUDENT_CONFIG': bindings.get('TEACHER_CONFIG', '%T5_1_1_XL')}, task)
    assert result['teacher'] == {v: k for k, v in SIZE_OF_WIDTH.items()}[teacher], where
    temperature = float(bindings.get('TEACHER_TEMPERATURE', table['teacher_temperature']))
    assert gkd['teacher_temperature'] == temperature, where
    labels = run.labels
    if 'method' in labels:
      check_method(gkd, labels['method'], where)
      if labels['method'] in PAPER_BETAS:
        assert gkd['beta'] == PAPER_BETAS[labels['method']], where
    if 'divergence' in labels:
      check_divergence(gkd, labels['divergence'], where)
    if 'lambda' in labels:
      assert gkd['lmbda'] == float(labels['lambda']), where
    if 'alpha' in labels:  # Fig. 5: RL + on-policy GKD with JSD(0.9)
      assert (gkd['divergence'], gkd['beta'], gkd['lmbda'], gkd['alpha']) == (
          'jsd',
          0.9,
          1.0,
          float(labels['alpha']),
      ), where
      assert result['reward_path'] == '/sweeps/classifier', where
    else:
      assert gkd['alpha'] == 1.0, where
    # XSum learning rate (A.1 text): small 1e-3, except 3e-4 with reverse KL; else the table's.
    lr = (
        0.001
        if (task == 'xsum' and size == 'small' and gkd['divergence'] != 'reverse_kl')
        else table['lr']
    )
    assert isinstance(result['initial'], str) and isinstance(result['teacher_path'], str), where
  assert result['steps'] == steps, where
  assert result['lr'] == lr, where
  # Linear warmup from 0 (none on FLAN), constant, then the table's linear cooldown to 0
  # (A.1, A.2; SFT runs: none, our choice).
  warmup, cooldown = table['warmup'], None if sft else table['cooldown']

  def expected_lr(step):
    if step < warmup:
      return lr * step / warmup
    if cooldown and step >= cooldown[0]:
      return lr * max(cooldown[1] - step, 0) / (cooldown[1] - cooldown[0])
    return lr

  # JSON from the parsing subprocess: the steps come back as strings.
  assert result['lr_at'] == pytest.approx(
      {step: expected_lr(int(step)) for step in result['lr_at']}, rel=1e-3, abs=1e-9
  ), where
  if runner == 't5x':
    assert result['relative_steps'] == steps, where  # counted from the restored step
    from_run_dir = spec_runner == 't5x' and bindings.get('INITIAL_CHECKPOINT_PATH', '').startswith(
        "'/sweeps"
    )
    assert result['restore_mode'] == ('latest' if from_run_dir else 'specific'), where


def _check_eval(result, task, evaluation_label, run, runner, spec_runner, where):
  table = TABLES[task]
  if runner == 't5x' and spec_runner == 't5x':
    # launch/sweep.py restores a run directory with T5X's 'latest' mode, a step directory (the
    # public checkpoints of A.10 and A.11) with its default 'specific' one.
    step_dir = re.search(r'/checkpoint_\d+$', run.checkpoint) is not None
    assert result['restore_mode'] == ('specific' if step_dir else 'latest'), where
  decode = result['decode']
  if evaluation_label.startswith('T='):
    assert (decode['method'], decode['temperature']) == (
        'sample',
        float(evaluation_label[2:]),
    ), where
  else:
    assert decode['method'] == table['decode'], where
  assert decode['calculator'] == (task == 'gsm8k'), where
  if task == 'flan':
    assert (result['task'], result['eval_split']) == (evaluation_label.lower(), 'test'), where
  else:
    assert result['eval_split'] == table['split'], where


@pytest.mark.parametrize('runner', RUNNERS)
def test_spec_configs_parse_and_build_what_the_paper_says(parsed, runner):
  uses, by_key, _, _ = _runner_or_skip(parsed, runner)
  failures = [(key, r['error']) for key, r in by_key.items() if not r['ok']]
  assert not failures, failures[:3]
  unresolved = [(key, r['required']) for key, r in by_key.items() if r['required']]
  assert not unresolved, unresolved[:3]
  assert all(r['registered'] for r in by_key.values())
  assert len(by_key) > 300 and len(uses) > 1200  # every command of every spec, deduplicated
  for spec, run, command, bindings, key in uses:
    result = by_key[key]
    task = task_of(run.gin_files)
    where = f'{runner}: {spec.name} {run.name} {command.log_name}'
    if command.kind == 'train':
      _check_train(result, task, run, bindings, runner, spec.runner.name, where)
    else:
      label = command.log_name.split('_sample_')[0][len('eval_') :].replace('T_', 'T=')
      _check_eval(result, task, label, run, runner, spec.runner.name, where)


@pytest.mark.parametrize('runner', RUNNERS)
def test_experiment_files_parse_alone(parsed, runner):
  _, _, configs, results = _runner_or_skip(parsed, runner)
  for config, result in zip(configs, results):
    path, kind = config['files'][0], config['kind']
    where = f'{runner}: {path} ({kind})'
    if path in NEEDS_WRITTEN_DATA:
      assert not result['ok'], where
      assert NEEDS_WRITTEN_DATA[path] in result['error'], (where, result['error'])
      assert 'gin.REQUIRED' in result['error'], (where, result['error'])
      continue
    if needs_initial_checkpoint(path) and not config.get('with_initial'):
      # A distillation run (or its evaluation) without the SFT student's path is refused.
      assert not result['ok'], where
      assert 'INITIAL_CHECKPOINT_PATH' in result['error'], (where, result['error'])
      assert 'gin.REQUIRED' in result['error'], (where, result['error'])
      continue
    assert result['ok'], (where, result.get('error'))
    assert not result['required'], (where, result['required'])
    task = task_of([path])
    if config['partial'] or task == 'arithmetic':
      continue
    table = TABLES[task]
    assert result['task'] == table['task'] and result['registered'], where
    assert (result['batch'], result['lengths'], result['dropout']) == (
        table['batch'],
        table['lengths'],
        table['dropout'],
    ), where
    assert result['decode']['method'] == table['decode'], where
    assert result['decode']['calculator'] == (task == 'gsm8k'), where
    assert result['eval_split'] == table['split'], where
    if kind == 'train':
      sft = path.endswith('/sft.gin')
      assert result['steps'] == (SFT_STEPS[task]['small'] if sft else table['steps']), where
      assert result['teacher'] == (None if sft else 2048), where
      assert result['student'] == (768 if task == 'flan' else 512), where
      assert result['gkd']['teacher_temperature'] == table['teacher_temperature'], where
      assert result['lr'] == table['lr'], where


def test_every_experiment_file_is_covered():
  tasks = {task_of([p]) for p in EXPERIMENT_FILES}
  assert {'xsum', 'wmt', 'gsm8k', 'flan', 'arithmetic'} <= tasks
  for task in ('xsum', 'wmt', 'gsm8k'):
    for name in ('base', 'sft', 'gkd'):
      assert f'gin/experiments/{task}/{name}.gin' in EXPERIMENT_FILES
  assert 'gin/experiments/flan/gkd.gin' in EXPERIMENT_FILES
  assert 'gin/experiments/paper_base.gin' in EXPERIMENT_FILES
