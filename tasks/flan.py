r"""Task-agnostic distillation on FLAN2021, with held-out MMLU and BBH evaluation (paper A.11).

No TFDS builder covers these, so every task reads JSON lines files that you prepare once: one
example per line, `{"inputs": "<model input, prompt included>", "targets": "<output>"}` (other
keys are ignored). The files of split S of a task are

  <data_dir>/[<task subdirectory>/]S*.jsonl      (one file, or shards: 'train-00000-of-00064.jsonl')

where `data_dir` is the `register_*` argument or, where that is None (so at import), the
environment variable below, read when the files are listed, not at registration. The path may
be anything `tf.io.gfile` reads (a local directory, gs://...).

  task            variable          files
  flan2021        GKD_FLAN2021_DIR  train*.jsonl, validation*.jsonl
  mmlu_<subject>  GKD_MMLU_DIR      <subject>/validation*.jsonl, <subject>/test*.jsonl
  bbh_<subtask>   GKD_BBH_DIR       <subtask>/test*.jsonl

Producing the files:
  * FLAN2021 (5.36M examples, 62 tasks): the Flan 2021 part of the FLAN collection
    (github.com/google-research/FLAN, `flan/v2`): build its seqio mixtures `flan_zsopt`,
    `flan_fsopt`, `flan_zsnoopt` and `flan_fsnoopt` (zero/few-shot templates, with/without
    answer options), iterate `get_dataset(split='train')` without tokenizing and write each
    example's `inputs_pretokenized` and `targets_pretokenized` as 'inputs' and 'targets'.
  * MMLU (Hendrycks et al. 2021, 57 subjects): from the released `data/{dev,val,test}/
    <subject>_{dev,val,test}.csv` (question, four options, answer letter), 5-shot prompts as in
    Hendrycks et al.'s evaluate.py: 'The following are multiple choice questions (with answers)
    about <subject, with spaces>.\n\n', then the 5 dev examples and the question, each as
    '<question>\nA. <a>\nB. <b>\nC. <c>\nD. <d>\nAnswer:' (followed by ' <letter>\n\n' for the
    exemplars); targets the letter. 'val' becomes split 'validation', 'test' split 'test'.
  * BBH (Suzgun et al. 2022, github.com/suzgunmirac/BIG-Bench-Hard): `bbh/<subtask>.json`
    (`examples`: `input`, `target`) with the 3 exemplars of `cot-prompts/<subtask>.txt` in front,
    'Q: <input>\nA:' last; targets `target`. For answer-only prompting (exact match of the whole
    output), keep each exemplar's final answer in place of its chain of thought.

Features and lengths. 'inputs' and 'targets' of the vocabulary, lengths `FLAN_FEATURE_LENGTHS`
(Table A.4): 2048 and 256 tokens, EOS included, for training and the held-out evaluation.

Metrics. flan2021 has none (it trains; its validation split gives the validation loss). Every
MMLU and BBH task reports 'exact_match' (`gkd_t5x.metrics.exact_match`: equality after strip()
and lower(), in percent). seqio evaluates a mixture task by task and reports each task's score
under its name; the paper's score is the unweighted mean over tasks, which `benchmark_score`
computes from those per-task scores: over MMLU's 57 subjects, and over BBH's 23 tasks, where
the 27 subtasks are grouped as in Suzgun et al.: 'logical_deduction' is the mean of its three,
five and seven objects variants, 'tracking_shuffled_objects' likewise, every other subtask is a
task of its own (`BBH_TASKS`).

Registered at import, with `common.DEFAULT_VOCABULARY` and the directories of the variables:
  flan2021; mmlu_<subject> for the 57 MMLU_SUBJECTS and the mixture mmlu; bbh_<subtask> for the
  27 BBH_SUBTASKS and the mixture bbh.
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import seqio

from gkd_t5x import metrics
from gkd_t5x.tasks import common

FLAN_FEATURE_LENGTHS = {'inputs': 2048, 'targets': 256}
FLAN2021_DIR_ENV = 'GKD_FLAN2021_DIR'
MMLU_DIR_ENV = 'GKD_MMLU_DIR'
BBH_DIR_ENV = 'GKD_BBH_DIR'
FLAN2021_SPLITS = ('train', 'validation')
MMLU_SPLITS = ('validation', 'test')
BBH_SPLITS = ('test',)

MMLU_SUBJECTS = (
    'abstract_algebra',
    'anatomy',
    'astronomy',
    'business_ethics',
    'clinical_knowledge',
    'college_biology',
    'college_chemistry',
    'college_computer_science',
    'college_mathematics',
    'college_medicine',
    'college_physics',
    'computer_security',
    'conceptual_physics',
    'econometrics',
    'electrical_engineering',
    'elementary_mathematics',
    'formal_logic',
    'global_facts',
    'high_school_biology',
    'high_school_chemistry',
    'high_school_computer_science',
    'high_school_european_history',
    'high_school_geography',
    'high_school_government_and_politics',
    'high_school_macroeconomics',
    'high_school_mathematics',
    'high_school_microeconomics',
    'high_school_physics',
    'high_school_psychology',
    'high_school_statistics',
    'high_school_us_history',
    'high_school_world_history',
    'human_aging',
    'human_sexuality',
    'international_law',
    'jurisprudence',
    'logical_fallacies',
    'machine_learning',
    'management',
    'marketing',
    'medical_genetics',
    'miscellaneous',
    'moral_disputes',
    'moral_scenarios',
    'nutrition',
    'philosophy',
    'prehistory',
    'professional_accounting',
    'professional_law',
    'professional_medicine',
    'professional_psychology',
    'public_relations',
    'security_studies',
    'sociology',
    'us_foreign_policy',
    'virology',
    'world_religions',
)

# BBH's 23 tasks -> their subtasks (the files and seqio tasks), as Suzgun et al. count them.
BBH_TASKS: Dict[str, Tuple[str, ...]] = {
    'boolean_expressions': ('boolean_expressions',),
    'causal_judgement': ('causal_judgement',),
    'date_understanding': ('date_understanding',),
    'disambiguation_qa': ('disambiguation_qa',),
    'dyck_languages': ('dyck_languages',),
    'formal_fallacies': ('formal_fallacies',),
    'geometric_shapes': ('geometric_shapes',),
    'hyperbaton': ('hyperbaton',),
    'logical_deduction': (
        'logical_deduction_five_objects',
        'logical_deduction_seven_objects',
        'logical_deduction_three_objects',
    ),
    'movie_recommendation': ('movie_recommendation',),
    'multistep_arithmetic_two': ('multistep_arithmetic_two',),
    'navigate': ('navigate',),
    'object_counting': ('object_counting',),
    'penguins_in_a_table': ('penguins_in_a_table',),
    'reasoning_about_colored_objects': ('reasoning_about_colored_objects',),
    'ruin_names': ('ruin_names',),
    'salient_translation_error_detection': ('salient_translation_error_detection',),
    'snarks': ('snarks',),
    'sports_understanding': ('sports_understanding',),
    'temporal_sequences': ('temporal_sequences',),
    'tracking_shuffled_objects': (
        'tracking_shuffled_objects_five_objects',
        'tracking_shuffled_objects_seven_objects',
        'tracking_shuffled_objects_three_objects',
    ),
    'web_of_lies': ('web_of_lies',),
    'word_sorting': ('word_sorting',),
}
BBH_SUBTASKS = tuple(sorted(sub for subs in BBH_TASKS.values() for sub in subs))


def _register_jsonl_task(
    name: str,
    vocabulary: seqio.Vocabulary,
    *,
    data_dir: Optional[str],
    env_var: str,
    subdir: str,
    splits: Sequence[str],
    metric_fns: Sequence,
) -> seqio.Task:
  config = {
      'source': 'jsonl',
      'data_dir': data_dir,
      'env_var': env_var,
      'subdir': subdir,
      'splits': tuple(splits),
      'metric_fns': tuple(metric_fns),
      'vocabulary': vocabulary,
  }
  return common.register_task_once(
      name,
      config,
      lambda: seqio.Task(
          name,
          source=common.JsonlDataSource(
              data_dir=data_dir, env_var=env_var, subdir=subdir, splits=splits
          ),
          preprocessors=list(common.TOKENIZE_AND_APPEND_EOS),
          output_features=common.output_features(vocabulary),
          postprocess_fn=common.to_str,
          metric_fns=list(metric_fns),
      ),
  )


def register_flan2021(
    name: str, vocabulary: seqio.Vocabulary, *, data_dir: Optional[str] = None
) -> seqio.Task:
  """Registers (once) and returns the FLAN2021 task `name`; splits 'train', 'validation'.

  Args:
    name: the seqio task name.
    vocabulary: the vocabulary of 'inputs' and 'targets'.
    data_dir: the directory of the JSON lines files; None reads $GKD_FLAN2021_DIR.
  """
  return _register_jsonl_task(
      name,
      vocabulary,
      data_dir=data_dir,
      env_var=FLAN2021_DIR_ENV,
      subdir='',
      splits=FLAN2021_SPLITS,
      metric_fns=(),
  )


def _register_benchmark(
    name: str,
    vocabulary: seqio.Vocabulary,
    *,
    data_dir: Optional[str],
    env_var: str,
    subtasks: Sequence[str],
    splits: Sequence[str],
) -> seqio.Mixture:
  task_names = [
      _register_jsonl_task(
          f'{name}_{subtask}',
          vocabulary,
          data_dir=data_dir,
          env_var=env_var,
          subdir=subtask,
          splits=splits,
          metric_fns=(metrics.exact_match,),
      ).name
      for subtask in subtasks
  ]
  return common.register_mixture_once(name, task_names)


def register_mmlu(
    name: str, vocabulary: seqio.Vocabulary, *, data_dir: Optional[str] = None
) -> seqio.Mixture:
  """Registers (once) the tasks `<name>_<subject>` of the 57 MMLU_SUBJECTS and their mixture.

  Args:
    name: the mixture's name, and the prefix of its tasks' names.
    vocabulary: the vocabulary of 'inputs' and 'targets'.
    data_dir: the directory of the subjects' subdirectories; None reads $GKD_MMLU_DIR.

  Returns:
    The mixture `name` (equal rates); splits 'validation' and 'test'.
  """
  return _register_benchmark(
      name,
      vocabulary,
      data_dir=data_dir,
      env_var=MMLU_DIR_ENV,
      subtasks=MMLU_SUBJECTS,
      splits=MMLU_SPLITS,
  )


def register_bbh(
    name: str, vocabulary: seqio.Vocabulary, *, data_dir: Optional[str] = None
) -> seqio.Mixture:
  """Registers (once) the tasks `<name>_<subtask>` of the 27 BBH_SUBTASKS and their mixture.

  Args:
    name: the mixture's name, and the prefix of its tasks' names.
    vocabulary: the vocabulary of 'inputs' and 'targets'.
    data_dir: the directory of the subtasks' subdirectories; None reads $GKD_BBH_DIR.

  Returns:
    The mixture `name` (equal rates); split 'test'.
  """
  return _register_benchmark(
      name,
      vocabulary,
      data_dir=data_dir,
      env_var=BBH_DIR_ENV,
      subtasks=BBH_SUBTASKS,
      splits=BBH_SPLITS,
  )


BENCHMARK_TASKS = {
    'mmlu': {subject: (subject,) for subject in MMLU_SUBJECTS},
    'bbh': BBH_TASKS,
}


def benchmark_score(
    benchmark: str, scores: Mapping[str, float], *, prefix: Optional[str] = None
) -> float:
  """The paper's score of a benchmark: the unweighted mean over its tasks.

  Args:
    benchmark: 'mmlu' (mean over the 57 subjects) or 'bbh' (mean over the 23 tasks, each the
      mean of its subtasks, see `BBH_TASKS`).
    scores: seqio task name ('<prefix>_<subtask>') -> that task's score (e.g. its
      'exact_match'), as seqio's evaluator reports them; other keys are ignored.
    prefix: the tasks' name prefix, i.e. the name given to `register_mmlu` / `register_bbh`;
      None for `benchmark` itself.

  Returns:
    The mean, in the units of `scores`.
  """
  if benchmark not in BENCHMARK_TASKS:
    raise ValueError(f'benchmark must be one of {tuple(BENCHMARK_TASKS)}, got {benchmark!r}.')
  prefix = benchmark if prefix is None else prefix
  groups = BENCHMARK_TASKS[benchmark]
  missing = [
      f'{prefix}_{sub}'
      for subs in groups.values()
      for sub in subs
      if f'{prefix}_{sub}' not in scores
  ]
  if missing:
    raise ValueError(f'scores lacks {len(missing)} {benchmark} task(s): {missing}.')
  task_means = [
      sum(scores[f'{prefix}_{sub}'] for sub in subs) / len(subs) for subs in groups.values()
  ]
  return sum(task_means) / len(task_means)


register_flan2021('flan2021', common.DEFAULT_VOCABULARY)
register_mmlu('mmlu', common.DEFAULT_VOCABULARY)
register_bbh('bbh', common.DEFAULT_VOCABULARY)
