"""launch/reproduce.py: the merged plan of the reproduction specs, and a real end-to-end run.

* the shipped specs (launch/sweeps/reproduction/) merge into one plan in which every
  distinct training appears once: the SFT students once per size, the Fig. 4 students as the
  grid's on-policy ones, and a merged run directory is a link to a training with the same
  command up to MODEL_DIR; every job only reads trainings planned before it;
* their gin configs build the method each label names (one subprocess);
* two small specs that share references and a point run for real (tiny networks, a few
  steps, one worker): each shared training once, the links, evaluations, resumption (a
  second call runs nothing), the figures, CSVs and tables.md;
* the effect size is Cohen's d with the pooled standard deviation.
"""

import hashlib
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from spec_labels import REPRODUCTION_METHODS
from spec_labels import check_divergence
from spec_labels import check_method

from gkd_t5x import checkpoints
from launch import claims
from launch import plan
from launch import reproduce
from launch import results
from launch import runners
from launch import spec as spec_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]

SPECS = sorted((ROOT / 'launch' / 'sweeps' / 'reproduction').glob('*.json'))  # in run order
TINY = 'tests/testdata/tiny_arithmetic.gin'
G = 'gin/experiments/arithmetic/'


def load_all():
  return [spec_lib.load(str(path)) for path in SPECS]


def bindings_of(job):
  return job.command.gin_bindings()


def test_shipped_specs_merge_into_one_plan_of_distinct_trainings(tmp_path):
  specs = load_all()
  assert {spec.name for spec in specs} == {
      'repro_fig7_grid_s',
      'repro_fig7_grid_xs',
      'repro_fig9_methods_s',
      'repro_fig9_methods_xs',
      'repro_fig8_lambda_xs',
      'repro_fig4_quality_diversity_xs',
      'repro_fig3_data_efficiency_xs',
      'repro_fig5_rl_xs',
      'repro_chain5_fig9_methods_s',
      'repro_chain5_fig3_data_efficiency_s',
      'repro_chain5_fig9_methods_xs',
  }
  # Each task's teacher is shipped as an exported checkpoint.
  teachers = {spec.references['teacher'].checkpoint for spec in specs}
  assert teachers == {
      'launch/checkpoints/arithmetic_sum3_2digit_teacher',
      'launch/checkpoints/arithmetic_chain5_teacher',
  }
  for teacher in teachers:
    assert checkpoints.resolve_step_dir(str(ROOT / teacher), 'teacher').name == 'checkpoint_4000'
  root = str(tmp_path)
  merged = plan.merge(specs, root)
  trainings = [job for job in merged.jobs if job.kind == 'train']
  # Per task, 2 SFT students. sum3_2digit: grids 2 x 15; methods 2 x 3 new (SFT continued,
  # SeqKD, f-distill); Fig. 8: lambda 0.25 and 0.75 x 2; Fig. 3: 5% and 25% x 2; Fig. 5: 2 x 5.
  # chain5: methods 2 x 6; Fig. 3: 5% and 25% x 2. All x 3 seeds.
  assert len(trainings) == 2 + 3 * (30 + 6 + 4 + 4 + 10) + 2 + 3 * (12 + 4)
  assert len({job.output_dir for job in merged.jobs}) == len(merged.jobs)
  sft = [job for job in trainings if job.output_dir.endswith('ref_student_sft')]
  assert len(sft) == 4
  assert sorted(str(bindings_of(job).get('STUDENT_CONFIG')) for job in sft) == [
      '%ARITHMETIC_STUDENT_XS',
      '%ARITHMETIC_STUDENT_XS',
      'None',
      'None',
  ]
  # Every merged directory is a link to a planned training with the same command up to paths.
  trained = {job.output_dir: job for job in trainings}
  for alias, target in merged.links.items():
    assert target in trained and alias not in trained
  by_dir = {}
  for spec in specs:
    for run in plan.expand(spec, root):
      by_dir[run.model_dir] = run
  for alias, target in merged.links.items():
    mine = by_dir[alias].commands[0].renamed(merged.links)
    theirs = trained[target].command
    assert (mine.module, mine.gin_files) == (theirs.module, theirs.gin_files)
    assert {k: v for k, v in mine.gin_bindings().items() if k != 'MODEL_DIR'} == {
        k: v for k, v in theirs.gin_bindings().items() if k != 'MODEL_DIR'
    }
  # Fig. 4's students are the grid's on-policy ones; every job reads earlier trainings only.
  fig4 = [d for d in merged.links if '/repro_fig4_quality_diversity_xs/divergence_' in d]
  assert len(fig4) == 15
  for alias in fig4:
    grid = alias.replace(
        '/repro_fig4_quality_diversity_xs/divergence_',
        '/repro_fig7_grid_xs/lambda_1.0__divergence_',
    )
    assert merged.links[alias] == merged.links.get(grid, grid)
  seen = set()
  for job in merged.jobs:
    assert all(need in seen for need in job.needs), job.name
    if job.kind == 'train':
      seen.add(job.output_dir)
  # The distillation runs of a task share one budget, parsed after the method's files:
  # reproduction.gin, or on the second task chain5_reproduction.gin (which includes it).
  for job in trainings:
    files = job.command.gin_files
    if not job.output_dir.endswith('ref_student_sft'):
      budget = G + ('chain5_' if '/repro_chain5_' in job.output_dir else '') + 'reproduction.gin'
      assert budget in files, job.name
      assert files.index(budget) >= 2


# The sha256 of the reproduction's merged plan under the root /ROOT, as `launch/reproduce.py
# --print` lists it (each job's name and command with `python` as the interpreter, then the
# links), recorded with the code that ran the reproduction. The results page comes from this
# plan, so any change to it (a spec, a merge rule, the order of bindings) shows here: compare
# `--print` before and after the change, then record the new digest.
REPRODUCTION_PLAN_SHA256 = 'bd3c851e41c6cf2a87fa982f99040b9bb8bf977f3638bf97d6952ca1b1190fe7'


def plan_lines(merged, python):
  lines = [f'{job.name}\n  {" ".join(job.command.argv(python))}' for job in merged.jobs]
  return lines + [f'link {alias} -> {target}' for alias, target in merged.links.items()]


def test_the_reproductions_plan_is_the_recorded_one(capsys):
  merged = plan.merge(load_all(), '/ROOT')
  assert (len(merged.jobs), len(merged.links)) == (562, 70)
  digest = hashlib.sha256('\n'.join(plan_lines(merged, 'python')).encode()).hexdigest()
  assert digest == REPRODUCTION_PLAN_SHA256
  # --print lists that plan.
  assert reproduce.main(['--root', '/ROOT', '--print']) == 0
  assert (
      capsys.readouterr().out.splitlines()
      == '\n'.join(plan_lines(merged, sys.executable)).splitlines()
  )


def test_shipped_specs_build_the_methods_their_labels_name(tmp_path):
  configs = {}
  expected = []
  for spec in load_all():
    for run in plan.expand(spec, str(tmp_path), seeds=[0]):
      for command in run.commands:
        if command.kind != 'train':
          continue
        key = json.dumps([command.gin_files, sorted(command.gin_bindings().items())])
        configs.setdefault(key, len(configs))
        expected.append((run, configs[key]))
  script = textwrap.dedent("""
      import json, sys
      import gin
      from gkd_t5x import gin_utils
      from gkd_t5x import tasks  # registers the tasks
      out = []
      for files, bindings in json.load(sys.stdin):
        gin.clear_config()
        gin_utils.parse_gin(files, [f'{k} = {v}' for k, v in bindings], finalize=False)
        def q(name, optional=False):
          try:
            value = gin.query_parameter(name)
          except ValueError:  # not bound
            if optional:
              return None
            raise
          while isinstance(value, gin.config.ConfigurableReference):
            value = value.scoped_configurable_fn()
          return value
        config, teacher = q('%GKD'), q('%TEACHER_CONFIG')
        schedule = 'optimizers.linear_warmup_constant_schedule'
        out.append(dict(divergence=config.divergence, beta=config.beta, alpha=config.alpha,
                        lmbda=config.lmbda.start, fixed_data=config.fixed_data,
                        steps=q('%TRAIN_STEPS'), batch=q('%BATCH_SIZE'),
                        student=q('%STUDENT_CONFIG').emb_dim,
                        teacher=teacher and teacher.emb_dim, task=q('%MIXTURE_OR_TASK_NAME'),
                        target_length=q('%TASK_FEATURE_LENGTHS')['targets'],
                        cooldown_end=q(f'{schedule}.cooldown_end', optional=True)))
      print(json.dumps(out))
  """)
  result = subprocess.run(
      [sys.executable, '-c', script],
      cwd=ROOT,
      capture_output=True,
      text=True,
      input=json.dumps([[f, b] for f, b in map(json.loads, configs)]),
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
      timeout=300,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  built = json.loads(result.stdout.splitlines()[-1])
  for run, index in expected:
    got, where = built[index], run.name
    size = 32 if '_xs/' in run.name else 64
    assert got['student'] == size, where
    task, length = (
        ('arithmetic_chain5', 56) if '_chain5_' in run.name else ('arithmetic_sum3_2digit', 32)
    )
    assert got['task'].startswith(task) and got['target_length'] == length, where
    if run.reference is not None:
      assert (got['steps'], got['batch'], got['divergence']) == (3000, 64, 'cross_entropy')
      # The second task's SFT students end converged (a cooldown to rate 0 at their last step).
      assert got['cooldown_end'] == (3000 if task == 'arithmetic_chain5' else None), where
      continue
    assert got['cooldown_end'] == (200 if task == 'arithmetic_chain5' else None), where
    assert (got['steps'], got['batch']) == (200, 32), where
    labels = run.labels
    if 'method' in labels:
      check_method(got, labels['method'], where, REPRODUCTION_METHODS)
    if 'divergence' in labels:
      check_divergence(got, labels['divergence'], where)
    if 'lambda' in labels:
      assert got['lmbda'] == float(labels['lambda']), where
    if 'data_percent' in labels:
      suffix = {'5': '_train5pct', '25': '_train25pct', '100': ''}[labels['data_percent']]
      assert got['task'] == task + suffix, where
    if 'alpha' in labels:
      assert (got['divergence'], got['beta'], got['lmbda'], got['alpha']) == (
          'jsd',
          0.9,
          1.0,
          float(labels['alpha']),
      ), where
      # RLEF*: the regularizer is the SFT student itself.
      assert got['teacher'] == (size if labels['regularizer'].startswith('self') else 128), where
    else:
      assert got['alpha'] == 1.0, where


def tiny_spec(name, lambdas):
  return {
      'name': name,
      'runner': 'gkd_t5x',
      'gin_files': [G + 'gkd.gin', TINY],
      'bindings': {
          'INITIAL_CHECKPOINT_PATH': "'{ref:student_sft}'",
          'TEACHER_CHECKPOINT_PATH': "'{ref:teacher}'",
          'TRAIN_STEPS': '3',
      },
      'references': {
          'teacher': {'gin_files': [G + 'teacher.gin', TINY], 'bindings': {'TRAIN_STEPS': '3'}},
          'student_sft': {
              'gin_files': [G + 'student_sft.gin', TINY],
              'bindings': {'TRAIN_STEPS': '3'},
          },
      },
      'axes': [
          {
              'name': 'lambda',
              'values': [{'label': lam, 'bindings': {'LMBDA': lam}} for lam in lambdas],
          }
      ],
      'seeds': [0],
      'evaluations': [{'label': 'greedy', 'bindings': {}}],
      'plot': {
          'kind': 'bars',
          'metric': 'accuracy',
          'x': 'lambda',
          'references': ['teacher', 'student_sft'],
          'evaluation': 'greedy',
      },
  }


def test_two_specs_sharing_runs_train_each_once_resume_and_draw(tmp_path, capsys):
  specs_dir = tmp_path / 'specs'
  specs_dir.mkdir()
  for spec in (tiny_spec('tiny_a', ['0.0']), tiny_spec('tiny_b', ['0.0'])):
    (specs_dir / f'{spec["name"]}.json').write_text(json.dumps(spec))
  root, out = tmp_path / 'runs', tmp_path / 'figures'
  args = ['--specs', str(specs_dir), '--root', str(root), '--out', str(out), '--workers', '1']
  assert reproduce.main(args) == 0
  log = capsys.readouterr().out
  # tiny_a: teacher, SFT student and lambda 0, each trained and evaluated once; tiny_b's
  # references and its point are tiny_a's.
  assert '6 jobs (3 trainings), 0 done already' in log
  assert log.count(': train done') == 3 and log.count(': eval greedy done') == 3
  for name in ('ref_teacher', 'ref_student_sft', 'lambda_0.0/seed_0'):
    link = root / 'tiny_b' / name
    assert link.is_symlink(), name
    assert link.resolve() == (root / 'tiny_a' / name).resolve()
  for run_dir in (
      root / 'tiny_a' / 'lambda_0.0' / 'seed_0',
      root / 'tiny_b' / 'lambda_0.0' / 'seed_0',
  ):
    assert (run_dir / runners.DONE).exists()
    assert (run_dir / 'eval_greedy' / 'metrics.json').exists()
    assert (run_dir / 'logs' / 'train.log').read_text().count('step 3/3') == 1
  for name in ('tiny_a', 'tiny_b'):
    assert (out / f'{name}.png').read_bytes()[:4] == b'\x89PNG'
    assert (out / f'{name}.csv').exists()
  tables = (out / 'tables.md').read_text()
  assert '### tiny_a' in tables and '### tiny_b' in tables
  # Resumed: nothing runs again.
  assert reproduce.main(args) == 0
  log = capsys.readouterr().out
  assert '6 jobs (3 trainings), 6 done already' in log and ' done in ' not in log


def test_probes_start_from_the_reproductions_trained_students(tmp_path):
  # A probe (launch/sweeps/probes/) runs beyond the reproduction's budget from its students,
  # named through {root}: each must be a training of the reproduction's plan under that root.
  root = str(tmp_path)
  trained = {job.output_dir for job in plan.merge(load_all(), root).jobs if job.kind == 'train'}
  probes = sorted((ROOT / 'launch' / 'sweeps' / 'probes').glob('*.json'))
  assert probes
  for path in probes:
    runs = plan.expand(spec_lib.load(str(path)), root)
    starts = {run.checkpoint for run in runs if run.reference == 'student_sft'}
    assert starts and starts <= trained, path.name


def test_print_lists_the_merged_jobs_and_links(tmp_path, capsys):
  assert reproduce.main(['--root', str(tmp_path), '--print', '--only', 'repro_fig5_rl_xs']) == 0
  lines = capsys.readouterr().out.splitlines()
  jobs = [line for line in lines if line and not line.startswith(('  ', 'link '))]
  assert any(line.endswith('ref_start: eval greedy_vs_teacher') for line in jobs)
  # --only keeps the trainings a chosen job reads (the SFT student and the teacher's eval).
  assert any(line.endswith('ref_student_sft: train') for line in jobs)
  assert all('repro_fig5_rl_xs' in line or 'ref_student_sft' in line for line in jobs)


def test_effect_size_is_cohens_d_with_the_pooled_deviation():
  a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
  mean = lambda x: sum(x) / len(x)
  var = lambda x: sum((v - mean(x)) ** 2 for v in x) / (len(x) - 1)
  pooled = math.sqrt((2 * var(a) + 3 * var(b)) / 5)
  got = results.effect_size(mean(b), math.sqrt(var(b)), 4, mean(a), math.sqrt(var(a)), 3)
  assert got == pytest.approx((mean(b) - mean(a)) / pooled)
  assert results.effect_size(2.0, 0.0, 3, 1.0, 0.0, 3) is None
  assert results.effect_size(2.0, 1.0, 1, 1.0, 1.0, 1) is None


def test_links_are_mended_when_the_order_of_the_specs_changes(tmp_path):
  a, b, c = (str(tmp_path / name / 'run') for name in ('a', 'b', 'c'))
  runners.link_merged_runs({b: a, c: a})
  os.makedirs(a)
  (pathlib.Path(a) / runners.DONE).write_text('')
  # Now c comes first: a's training moves there, a and b become links to it.
  runners.link_merged_runs({a: c, b: c})
  assert not os.path.islink(c) and (pathlib.Path(c) / runners.DONE).exists()
  for alias in (a, b):
    assert os.path.islink(alias) and os.path.realpath(alias) == os.path.realpath(c)
  runners.link_merged_runs({a: c, b: c})  # idempotent
  os.unlink(b)
  os.makedirs(b)
  with pytest.raises(RuntimeError, match='both hold a run'):
    runners.link_merged_runs({a: c, b: c})


def test_claim_verdicts_follow_the_effect_size_rule(tmp_path):
  claim = claims.Claim('Fig. X', 'a beats b', 'spec', 'accuracy', 'greedy', 'a', 'b')
  row = lambda mean, std: claims.Row(mean, std, 3)
  assert claims.verdict(claim, row(12.0, 1.0), row(10.0, 1.0))[1:] == (2.0, 'reproduced')
  assert claims.verdict(claim, row(10.5, 1.0), row(10.0, 1.0))[2] == 'not reproduced'
  assert claims.verdict(claim, row(8.0, 1.0), row(10.0, 1.0))[2] == 'reversed'
  lower = claims.Claim('Fig. X', 'a is lower', 'spec', 'divergence', 'greedy', 'a', 'b', sign=-1)
  assert claims.verdict(lower, row(8.0, 1.0), row(10.0, 1.0))[2] == 'reproduced'
  with open(tmp_path / 'spec.csv', 'w') as f:
    f.write(
        'point,reference,evaluation,metric,mean,std,n_seeds\n'
        'a,,greedy,accuracy,12.0,1.0,3\nb,,greedy,accuracy,10.0,1.0,3\n'
    )
  text = claims.table(str(tmp_path), [claim, lower])
  assert (
      '| Fig. X | a beats b | 12.00 ± 1.00 (n=3) | 10.00 ± 1.00 (n=3) | +2.00 | +2.0 | '
      'reproduced |'
  ) in text
  assert text.splitlines()[-1].endswith('| missing |')
  # Every shipped claim, the paper's and the testbed's, names points of its spec.
  testbed = sorted((ROOT / 'launch' / 'sweeps' / 'testbed').glob('*.json'))
  specs = {spec.name: spec for spec in load_all() + [spec_lib.load(str(path)) for path in testbed]}
  for claim in claims.CLAIMS + claims.TESTBED_CLAIMS:
    points = {run.point for run in plan.expand(specs[claim.spec], '/r')}
    assert {claim.first, claim.second} <= points, claim
    evaluations = [e.label for e in specs[claim.spec].evaluations]
    assert claim.evaluation in evaluations, claim


def worker_pids(driver_pid):
  """The pids of a driver's worker processes (multiprocessing's spawned children)."""
  children = pathlib.Path(f'/proc/{driver_pid}/task/{driver_pid}/children').read_text().split()
  return [
      int(pid)
      for pid in children
      if b'spawn_main' in pathlib.Path(f'/proc/{pid}/cmdline').read_bytes()
  ]


def start_driver(args):
  return subprocess.Popen(
      [sys.executable, 'launch/reproduce.py', *args],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
  )


def wait_for_log_line(log, line, driver, count=1, timeout=600):
  """Waits until `log` holds `line` `count` times, while the driver runs."""
  deadline = time.monotonic() + timeout
  while not (log.exists() and log.read_text().count(line) >= count):
    assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0]
    time.sleep(0.1)


def test_sigterm_reaches_the_workers_and_a_killed_worker_is_named(tmp_path):
  """The teacher's training (long) is running on the only worker. SIGTERM to the driver: the
  training saves, the job is reported interrupted, the driver exits 75. Rerun on two workers,
  the SFT student's training beside the teacher's, then the teacher's worker SIGKILLed: the
  driver names that job and marks it not done, the student's jobs go on to the end, and the
  driver exits 1."""
  spec = tiny_spec('tiny_a', ['1.0'])
  spec['references']['teacher']['bindings']['TRAIN_STEPS'] = '100000'
  specs_dir = tmp_path / 'specs'
  specs_dir.mkdir()
  (specs_dir / 'tiny_a.json').write_text(json.dumps(spec))
  root = tmp_path / 'runs'
  args = ['--specs', str(specs_dir), '--root', str(root), '--out', str(tmp_path / 'out')]
  teacher, student = root / 'tiny_a' / 'ref_teacher', root / 'tiny_a' / 'ref_student_sft'
  driver = start_driver([*args, '--workers', '1', '--only', 'ref_teacher'])
  wait_for_log_line(teacher / 'logs' / 'train.log', 'step 2/100000', driver)
  driver.send_signal(signal.SIGTERM)
  out = driver.communicate(timeout=300)[0]
  assert driver.returncode == 75, out
  assert re.search(r'^\[1/\d\] tiny_a/ref_teacher: train: INTERRUPTED \(SIGTERM', out, re.M), out
  assert (
      'Interrupted: Preempted (SIGTERM): saved the checkpoint of step'
      in (teacher / 'logs' / 'train.log').read_text()
  )
  assert list(teacher.glob('checkpoint_*')) and not (teacher / runners.DONE).exists()

  driver = start_driver([*args, '--workers', '2', '--only', 'ref_'])
  # The second "Training <dir>: steps <first> -> 100000" line: the training has resumed.
  wait_for_log_line(teacher / 'logs' / 'train.log', ' -> 100000', driver, count=2)
  (worker,) = [  # the worker whose output goes to the teacher's log
      pid
      for pid in worker_pids(driver.pid)
      if os.readlink(f'/proc/{pid}/fd/1') == str(teacher / 'logs' / 'train.log')
  ]
  os.kill(worker, signal.SIGKILL)
  out = driver.communicate(timeout=300)[0]
  assert driver.returncode == 1, out
  assert 'tiny_a/ref_teacher: train: its worker process died (killed?)' in out, out
  assert not (teacher / runners.DONE).exists()
  assert (student / runners.DONE).exists()  # the other worker's job went on
  assert (student / 'eval_greedy' / 'metrics.json').exists()
