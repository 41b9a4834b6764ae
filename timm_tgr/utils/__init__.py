"""Small helpers shared by the trainer, the export and the benchmarks (no models, no training)."""
from .metrics_log import metrics_row, read_metrics, write_metrics

__all__ = ['metrics_row', 'read_metrics', 'write_metrics']
