"""timm-tgr's trainer (``train_tgr.py``, ``python -m timm_tgr.train``, ``timm-tgr-train``)."""
from .trainer import build_parser, main, parse_args, read_metrics
