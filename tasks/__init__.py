"""seqio task and mixture registrations of gkd_t5x, installed as `gkd_t5x.tasks`."""
