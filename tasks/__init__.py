"""seqio task and mixture registrations of gkd_t5x, installed as `gkd_t5x.tasks`.

Importing the package registers every task (seqio style: tasks are data, registered once):
`arithmetic` (chain-of-thought arithmetic generated from a seed).
"""

from gkd_t5x.tasks import arithmetic  # pylint: disable=unused-import  # noqa: F401
