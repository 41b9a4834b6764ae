"""JSON files and run metrics as the study scripts read and write them."""
import json
import os
from typing import List


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(path: str, data) -> None:
    """Atomically (a temp file, then ``os.replace``); NaN/inf are refused (strict JSON)."""
    tmp = path + '.part'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def read_metrics(path: str) -> List[dict]:
    """A run's metrics.jsonl rows; [] when the run has not written one yet."""
    from timm_tgr.utils import read_metrics as _read_metrics
    try:
        return _read_metrics(path)
    except FileNotFoundError:
        return []
