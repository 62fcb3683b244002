"""``torchrun``: this process's rank and the barrier between the ranks of a run.

A folder run under ``torchrun`` shards its scans by rank (every ``WORLD_SIZE``-th scan from
``RANK``); a cohort run waits at :func:`barrier` until every rank has stored its share of the
features. The process group (gloo, over the ``MASTER_ADDR`` / ``MASTER_PORT`` that ``torchrun``
sets) is made on first use.
"""

from __future__ import annotations

import datetime
import os

BARRIER_TIMEOUT = datetime.timedelta(hours=24)
"""How long a rank waits at the barrier for the others (feature extraction of its share of the scans)."""


def rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``torchrun``'s ``RANK`` and ``WORLD_SIZE``)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    """Wait for every rank of this ``torchrun`` run; returns at once in a single process."""
    if rank_world()[1] == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    dist.barrier()
