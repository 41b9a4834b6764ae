"""The adaptive distillation switch under DDP: ranks that measure different probe consistencies still take one
decision, from their mean (2 gloo processes on the CPU)."""
import argparse
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from timm_tgr.task.schedule import DistillSchedule
from timm_tgr.train.loop import mean_over_processes


def _rank(rank: int, port: int, results) -> None:
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        args = argparse.Namespace(distributed=True)
        schedule = DistillSchedule('adaptive', total_steps=100, patience=1, delta=0.01, min_fraction=0.)
        schedule.step = 50
        # rank 0 alone would see a plateau (gain 0.005), rank 1 alone a gain (0.02); their means gain 0.0125
        for consistency in ([0.800, 0.805] if rank == 0 else [0.800, 0.820]):
            schedule.observe_consistency(mean_over_processes(consistency, args))
        results[rank] = (schedule.history, schedule.stopped_at)
    finally:
        dist.destroy_process_group()


def test_adaptive_switch_decides_alike_on_every_rank():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(port, results), nprocs=2, join=True)
    assert results[0] == results[1]
    history, stopped_at = results[0]
    assert [round(h, 4) for h in history] == [0.8, 0.8125] and stopped_at is None  # the mean gained 0.0125 > delta
    assert mean_over_processes(0.3, argparse.Namespace(distributed=False)) == 0.3
