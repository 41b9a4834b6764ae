"""Small helpers shared by the trainer, the export and the benchmarks (no models, no training): the run's
``metrics.jsonl`` (:mod:`.metrics_log`) and the one checkpoint reader (:mod:`.checkpoint`)."""
from .checkpoint import check_finite, read_checkpoint, run_outputs, select_weights, student_state_dict
from .metrics_log import metrics_row, read_metrics, write_metrics

__all__ = ['metrics_row', 'read_metrics', 'write_metrics', 'read_checkpoint', 'select_weights', 'student_state_dict',
           'check_finite', 'run_outputs']
