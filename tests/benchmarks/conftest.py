"""The study scripts run as ``python benchmarks/<script>.py``, which puts ``benchmarks/`` on ``sys.path`` for their
``harness`` package; the tests load them from their paths, so they put it there too."""
import os
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'benchmarks')
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)
