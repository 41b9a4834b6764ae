"""Committed results: a study writes under its ``--output`` (``output/...``, not committed); ``--publish NAME``
copies its tables, JSON and plots, never its run folders or checkpoints, to ``benchmarks/results/NAME/``."""
import logging
import os
import shutil
from typing import List, Optional

from .runner import ROOT

RESULTS_DIR = os.path.join(ROOT, 'benchmarks', 'results')
# what a study writes at the top of its --output that is worth committing
PUBLISHED_SUFFIXES = ('.md', '.json', '.csv', '.png')


def publish(output: str, name: Optional[str]) -> List[str]:
    """Copy the top-level results of ``output`` into ``benchmarks/results/<name>/`` (nothing when ``name`` is None);
    returns the copied paths."""
    if name is None:
        return []
    if not name or os.sep in name or name in ('.', '..'):
        raise SystemExit(f'--publish takes a folder name under benchmarks/results/ (e.g. cpu_all), got {name!r}.')
    files = sorted(f for f in os.listdir(output)
                   if f.endswith(PUBLISHED_SUFFIXES) and os.path.isfile(os.path.join(output, f)))
    if not files:
        raise SystemExit(f'nothing to publish in {output}: run the study (or --report-only) first.')
    dest = os.path.join(RESULTS_DIR, name)
    os.makedirs(dest, exist_ok=True)
    copied = []
    for f in files:
        shutil.copyfile(os.path.join(output, f), os.path.join(dest, f))
        copied.append(os.path.join(dest, f))
    logging.getLogger('reproduce').info(f'published {len(copied)} files to {dest}')
    return copied
