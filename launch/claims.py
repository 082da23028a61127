r"""The paper's claims, checked against the small-scale reproduction's CSVs, and the on-policy
testbed's.

    python launch/claims.py [--figures results/figures]
    python launch/claims.py --claims testbed --figures results/figures/testbed

Reads the CSVs that `launch/reproduce.py` (through `launch/figures.py`) writes, and prints one
markdown row per claim: the two quantities compared (mean +- std over n seeds; a reference
such as the SFT start is one run, n = 1), their
difference, the effect size d (the difference over the pooled standard deviation of one seed,
`results.effect_size`) and a verdict by a fixed rule:

    reproduced      the difference has the claimed sign and d >= 1
    reversed        the opposite sign and |d| >= 1
    not reproduced  |d| < 1 (within about one seed-to-seed standard deviation)

A claim is data (`CLAIMS`): the spec's CSV, the metric and evaluation, and the two points
(each a point directory name, or 'ref_<name>' for a reference), with the claimed sign of
"first minus second".
"""

import argparse
import csv
import dataclasses
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

if __name__ == '__main__' and not __package__:
  # Run as `python launch/claims.py`: the package is in the repository root, not in launch/.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from launch import REPO_ROOT
from launch import results

DEFAULT_FIGURES = os.path.join(REPO_ROOT, 'results', 'figures')
DIVERGENCES = ('FKL', 'JSD_0.1', 'JSD_0.5', 'JSD_0.9', 'RKL')


@dataclasses.dataclass(frozen=True)
class Claim:
  figure: str  # the paper's figure
  text: str  # the claim, as the paper makes it (at this scale)
  spec: str  # the CSV's name (the spec's)
  metric: str
  evaluation: str
  first: str  # point directory or 'ref_<name>'
  second: str
  sign: int = 1  # +1: first > second is claimed; -1: first < second


def _panel(name: str, figure: str, task: str) -> Tuple[str, str]:
  """(the CSV's name, the figure label) of panel `repro_<name>` on the first task (task '') or
  on another (e.g. 'chain5': `repro_chain5_<name>`, labelled '<figure> (chain5)')."""
  if not task:
    return f'repro_{name}', figure
  return f'repro_{task}_{name}', f'{figure} ({task})'


def _methods(size: str, task: str = '') -> List[Claim]:
  """Figs. 1 / 9 on the first task (task '') or on the second (task 'chain5')."""
  spec, figure = _panel(f'fig9_methods_{size}', 'Figs. 1, 9', task)
  gkd = 'method_GKD_on-policy'
  who = {'s': '0.25M', 'xs': '0.07M'}[size]
  return [
      Claim(
          figure,
          f'{who} student: on-policy GKD beats {name}',
          spec,
          'accuracy',
          'greedy',
          gkd,
          point,
      )
      for name, point in (
          ('the SFT student', 'ref_student_sft'),
          ('SFT for the same steps', 'method_SFT_continued'),
          ('supervised KD', 'method_Supervised_KD'),
          ('SeqKD', 'method_SeqKD'),
          ('ImitKD', 'method_ImitKD'),
          ('f-distill', 'method_f-distill'),
      )
  ]


def _data_efficiency(size: str, task: str = '') -> List[Claim]:
  """Fig. 3 on the first task (task '') or on the second (task 'chain5')."""
  spec, figure = _panel(f'fig3_data_efficiency_{size}', 'Fig. 3', task)
  return [
      Claim(
          figure,
          f'{pct}% of the data: on-policy GKD beats supervised KD',
          spec,
          'accuracy',
          'greedy',
          f'data_percent_{pct}__method_GKD_on-policy',
          f'data_percent_{pct}__method_Supervised_KD',
      )
      for pct in ('5', '25', '100')
  ] + [
      Claim(
          figure,
          'on-policy GKD on 5% of the data beats supervised KD on 100%',
          spec,
          'accuracy',
          'greedy',
          'data_percent_5__method_GKD_on-policy',
          'data_percent_100__method_Supervised_KD',
      )
  ]


def _grid(size: str) -> List[Claim]:
  who = {'s': '0.25M', 'xs': '0.07M'}[size]
  return [
      Claim(
          'Figs. 6, 7, A.12-A.14',
          f'{who} student, {div.replace("_", "(")}'
          f'{")" if "_" in div else ""}: on-policy (λ=1) beats supervised (λ=0)',
          f'repro_fig7_grid_{size}',
          'accuracy',
          'greedy',
          f'lambda_1.0__divergence_{div}',
          f'lambda_0.0__divergence_{div}',
      )
      for div in DIVERGENCES
  ]


CLAIMS: Tuple[Claim, ...] = tuple(
    _methods('s')
    + _methods('xs')
    + _grid('s')
    + _grid('xs')
    + [
        Claim(
            'Fig. 8',
            f'{div}: λ=1 beats λ=0',
            'repro_fig8_lambda_xs',
            'accuracy',
            'greedy',
            f'lambda_1.0__divergence_{div}',
            f'lambda_0.0__divergence_{div}',
        )
        for div in ('FKL', 'RKL')
    ]
    + [
        Claim(
            'Fig. 8',
            f'{div}: λ=0.25 beats λ=0 (gains start by 25% on-policy data)',
            'repro_fig8_lambda_xs',
            'accuracy',
            'greedy',
            f'lambda_0.25__divergence_{div}',
            f'lambda_0.0__divergence_{div}',
        )
        for div in ('FKL', 'RKL')
    ]
    + [
        Claim(
            'Fig. 4',
            "RKL samples are less diverse than FKL's at T=1 (higher Self-BLEU)",
            'repro_fig4_quality_diversity_xs',
            'self_bleu',
            'T=1.0',
            'divergence_RKL',
            'divergence_FKL',
        ),
        Claim(
            'Fig. 4',
            "JSD(0.9) samples are less diverse than FKL's at T=1",
            'repro_fig4_quality_diversity_xs',
            'self_bleu',
            'T=1.0',
            'divergence_JSD_0.9',
            'divergence_FKL',
        ),
        Claim(
            'Fig. 4',
            'mode-seeking RKL gives better quality than FKL at T=1',
            'repro_fig4_quality_diversity_xs',
            'accuracy',
            'T=1.0',
            'divergence_RKL',
            'divergence_FKL',
        ),
        Claim(
            'Fig. 4',
            'at T=0.1 the quality gap RKL - FKL shrinks (RKL still >= FKL)',
            'repro_fig4_quality_diversity_xs',
            'accuracy',
            'T=0.1',
            'divergence_RKL',
            'divergence_FKL',
        ),
    ]
    + _data_efficiency('xs')
    + [
        Claim(
            'Fig. 3',
            'on-policy GKD on 5% beats supervised KD on 100% (T=1 sampling, as '
            'the paper evaluates)',
            'repro_fig3_data_efficiency_xs',
            'accuracy',
            'T=1.0',
            'data_percent_5__method_GKD_on-policy',
            'data_percent_100__method_Supervised_KD',
        ),
    ]
    + [
        Claim(
            'Fig. 5',
            'more distillation weight α brings the student closer to the teacher '
            '(α=0.5 vs α=0.05: lower JSD(0.9))',
            'repro_fig5_rl_xs',
            'divergence',
            'greedy_vs_teacher',
            'regularizer_teacher_GKD__alpha_0.5',
            'regularizer_teacher_GKD__alpha_0.05',
            sign=-1,
        ),
        Claim(
            'Fig. 5',
            'more distillation weight α lowers the reward gain (α=0.5 vs 0.05)',
            'repro_fig5_rl_xs',
            'sequence_accuracy',
            'greedy_vs_teacher',
            'regularizer_teacher_GKD__alpha_0.5',
            'regularizer_teacher_GKD__alpha_0.05',
            sign=-1,
        ),
        Claim(
            'Fig. 5',
            'RL + GKD (α=0.1) stays closer to the teacher than RLEF* (α=0.1)',
            'repro_fig5_rl_xs',
            'divergence',
            'greedy_vs_teacher',
            'regularizer_teacher_GKD__alpha_0.1',
            'regularizer_self_RLEF__alpha_0.1',
            sign=-1,
        ),
        Claim(
            'Fig. 5',
            'RL + GKD (α=0.1) raises the reward over the SFT start',
            'repro_fig5_rl_xs',
            'sequence_accuracy',
            'greedy_vs_teacher',
            'regularizer_teacher_GKD__alpha_0.1',
            'ref_start',
        ),
    ]
    + _methods('s', 'chain5')
    + _data_efficiency('s', 'chain5')
    + _methods('xs', 'chain5')
)


def _testbed(
    spec: str, figure: str, teachers_kind: str, divergences: Sequence[str] = ('FKL',)
) -> List[Claim]:
  """A positive control of the testbed (launch/sweeps/testbed/<spec>.json): on-policy GKD against
  each same-budget control, greedy and sampled at T = 1, for each divergence ('FKL', 'RKL': the
  off-policy controls' divergence is GKD's)."""
  claims = []
  for divergence in divergences:
    suffix = '' if divergence == 'FKL' else f'_{divergence}'
    controls = (
        ('SFT for the same steps', 'method_SFT_continued'),
        ('supervised KD on the ground truth', f'method_Supervised_KD_clean{suffix}'),
        (
            "supervised KD on the teacher's kind of data",
            f'method_Supervised_KD_{teachers_kind}{suffix}',
        ),
    )
    claims += [
        Claim(
            figure,
            f'{label}, {divergence}: on-policy GKD beats {name}',
            spec,
            'accuracy',
            evaluation,
            f'method_GKD_on-policy_{divergence}',
            point,
        )
        for evaluation, label in (('greedy', 'greedy'), ('T=1.0', 'T = 1'))
        for name, point in controls
    ]
  return claims


# Each knob of the knob study and the SFT student its runs start from (a reference of the spec).
KNOB_STARTS = {
    'none': 'ref_student_sft',
    'target_entropy': 'ref_student_sft',
    'recoverable_slips': 'ref_student_sft',
    'horizon': 'ref_chain5_student_sft',
    'capacity_gap': 'ref_student_xs_sft',
}


def _from_sft(figure: str, spec: str, suffix: str, start: str) -> List[Claim]:
  """One setting of runs that start from an SFT student: on-policy GKD against supervised KD on
  the ground truth (the on-policy advantage), against SFT continued, and against the SFT
  checkpoint `start` it starts from (issue 23: it must not end below it); greedy and at T = 1.
  Points are `method_<method><suffix>`."""
  controls = (
      ('beats supervised KD on the ground truth', f'method_Supervised_KD_ground_truth{suffix}'),
      ('beats SFT for the same steps', f'method_SFT_continued{suffix}'),
      ('ends above its start', start),
  )
  return [
      Claim(
          figure,
          f'{label}: on-policy GKD {name}',
          spec,
          'accuracy',
          evaluation,
          f'method_GKD_on-policy_FKL{suffix}',
          point,
      )
      for evaluation, label in (('greedy', 'greedy'), ('T=1.0', 'T = 1'))
      for name, point in controls
  ]


def _knob_study() -> List[Claim]:
  """The knob study (launch/sweeps/testbed/knob_study.json) at every knob, and its
  target-entropy setting for 2000 steps (target_entropy_budget.json)."""
  return [
      claim
      for knob, start in KNOB_STARTS.items()
      for claim in _from_sft(
          f'Knob study ({knob.replace("_", " ")})', 'knob_study', f'__knob_{knob}', start
      )
  ] + _from_sft(
      'Knob study (target entropy, 2000 steps)',
      'target_entropy_budget',
      '__steps_2000',
      'ref_student_sft',
  )


TESTBED_CLAIMS: Tuple[Claim, ...] = tuple(
    _testbed('sum3_recovery_positive_control', 'Testbed (recovery)', 'slips')
    + _testbed('sum3_entropy_positive_control', 'Testbed (entropy)', 'both_orders', ('FKL', 'RKL'))
    + _testbed('sum3_entropy_cooled', 'Testbed (entropy, quieter budget)', 'both_orders')
    + _knob_study()
)


@dataclasses.dataclass
class Row:
  mean: float
  std: float
  n: int


def read(figures: str, spec: str) -> Dict[Tuple[str, str, str], Row]:
  path = os.path.join(figures, f'{spec}.csv')
  rows = {}
  if os.path.exists(path):
    with open(path) as f:
      for r in csv.DictReader(f):
        if r['mean']:
          rows[(r['point'], r['evaluation'], r['metric'])] = Row(
              float(r['mean']), float(r['std'] or 0.0), int(r['n_seeds'])
          )
  return rows


def verdict(claim: Claim, first: Row, second: Row) -> Tuple[float, Optional[float], str]:
  """(difference, effect size d, verdict) of `first - second` against the claimed sign."""
  difference = first.mean - second.mean
  d = results.effect_size(first.mean, first.std, first.n, second.mean, second.std, second.n)
  if d is None:
    return difference, None, 'reproduced' if difference * claim.sign > 0 else 'not reproduced'
  signed = d * claim.sign
  return (
      difference,
      d,
      ('reproduced' if signed >= 1 else 'reversed' if signed <= -1 else 'not reproduced'),
  )


def table(figures: str, claims: Sequence[Claim] = CLAIMS) -> str:
  lines = [
      '| figure | claim | first | second | difference | d | verdict |',
      '| --- | --- | --- | --- | --- | --- | --- |',
  ]
  cache: Dict[str, Dict] = {}
  for claim in claims:
    rows = cache.setdefault(claim.spec, read(figures, claim.spec))
    first = rows.get((claim.first, claim.evaluation, claim.metric))
    second = rows.get((claim.second, claim.evaluation, claim.metric))
    if first is None or second is None:
      lines.append(f'| {claim.figure} | {claim.text} | | | | | missing |')
      continue
    difference, d, word = verdict(claim, first, second)
    digits = 4 if abs(first.mean) < 1 else 2  # divergences are small numbers
    show = lambda row, digits=digits: f'{row.mean:.{digits}f} ± {row.std:.{digits}f} (n={row.n})'
    lines.append(
        f'| {claim.figure} | {claim.text} | {show(first)} | {show(second)} | '
        f'{difference:+.{digits}f} | {"" if d is None else f"{d:+.1f}"} | {word} |'
    )
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description="The paper's claims against the CSVs.")
  parser.add_argument('--figures', default=DEFAULT_FIGURES, help='where the CSVs are')
  parser.add_argument(
      '--claims',
      choices=('paper', 'testbed'),
      default='paper',
      help="the paper's claims (the reproduction) or the on-policy testbed's",
  )
  args = parser.parse_args(argv)
  print(table(args.figures, CLAIMS if args.claims == 'paper' else TESTBED_CLAIMS))
  return 0


if __name__ == '__main__':
  sys.exit(main())
