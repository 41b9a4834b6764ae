"""A run's ``metrics.jsonl``: one JSON object per line, one line per epoch.

The trainer rewrites the whole file after every epoch with :func:`write_metrics` (a temp file and
``os.replace``, so a reader never sees half a file). Files written by other means (an appending writer,
a copy cut short) can still end in a torn line: :func:`read_metrics` skips that last line with a warning
and refuses any other malformed line, naming the file and line.
"""
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Union

__all__ = ['read_metrics', 'write_metrics', 'metrics_row']

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """The rows of ``path`` in file order (blank lines ignored).

    Raises FileNotFoundError when the file is missing. A last line that is not a JSON object (an
    interrupted write) is skipped with a warning; any other such line raises ValueError naming it.
    """
    with open(path, 'r') as f:
        lines = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
    rows = []
    for n, (i, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f'a JSON {type(row).__name__}, not an object')
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            if n == len(lines) - 1:
                _logger.warning(f'{path}:{i}: the last line is not a JSON row (an interrupted write?); skipped.')
                break
            raise ValueError(
                f'{path}:{i} is not a JSON metrics row ({e}); only the last line may be torn. Fix or delete '
                f'that line (metrics.jsonl holds one JSON object per epoch).') from e
        rows.append(row)
    return rows


def write_metrics(path: PathLike, rows: Iterable[Dict[str, Any]]) -> None:
    """Write ``rows`` to ``path``, one JSON object per line, atomically (temp file, then ``os.replace``)."""
    path = os.fspath(path)
    tmp = f'{path}.{os.getpid()}.tmp'  # same folder (os.replace stays atomic), the file mode of a plain open
    try:
        with open(tmp, 'w') as f:
            for row in rows:
                f.write(json.dumps(row) + '\n')
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def metrics_row(rows: List[Dict[str, Any]], epoch: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """The row of ``epoch`` (the last one if several), or the last row when ``epoch`` is None; None if absent."""
    if epoch is None:
        return rows[-1] if rows else None
    same = [r for r in rows if r.get('epoch') == epoch]
    return same[-1] if same else None
