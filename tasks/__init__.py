"""seqio task and mixture registrations of gkd_t5x, installed as `gkd_t5x.tasks`.

Importing the package registers every task (seqio style: tasks are data, registered once):
  `arithmetic`  chain-of-thought arithmetic generated from a seed (offline, byte vocabulary),
                with the on-policy testbed's knobs on its worked steps (`steps`: slips and
                their corrections, commuted steps).
  `xsum`        XSum summarization and its 1K / 10K / 50K train subsets (TFDS).
  `wmt`         WMT14 English-German translation, `wmt_t2t_ende_v003` (TFDS).
  `gsm8k`       GSM8K with the 4-shot chain-of-thought prompt (TFDS).
  `flan`        FLAN2021 instruction tuning and the MMLU / BBH held-out mixtures (JSON lines
                files named by environment variables).
  `seqkd`       teacher-decoded copies of any of them (`python -m gkd_t5x.seqkd_data`), named
                by $GKD_SEQKD_TASKS; imported last, as it builds on the others.
  `offline_teacher`  a task's examples with the teacher's stored top-k log-probs
                (`python -m gkd_t5x.offline_teacher`), registered from gin
                (`offline_teacher_task`).
The paper's tasks use T5's SentencePiece vocabulary (`common.DEFAULT_VOCABULARY`); registering
touches no data, network or GCS: datasets and the vocabulary are read on first use.
"""

from gkd_t5x.tasks import arithmetic  # noqa: F401
from gkd_t5x.tasks import flan  # noqa: F401
from gkd_t5x.tasks import gsm8k  # noqa: F401
from gkd_t5x.tasks import wmt  # noqa: F401
from gkd_t5x.tasks import xsum  # noqa: F401

# isort: split
from gkd_t5x.tasks import offline_teacher  # noqa: F401
from gkd_t5x.tasks import seqkd  # noqa: F401  # after the tasks it copies
