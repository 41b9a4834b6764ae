"""The study scripts run as ``python benchmarks/<script>.py``, which puts ``benchmarks/`` on ``sys.path`` for their
``harness`` package; the tests load them from their paths, so they put it there too."""
import importlib.util
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'benchmarks')
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)


def load_script(name: str):
    """``benchmarks/<name>.py`` loaded from its path as the module ``timm_tgr_bench_<name>``."""
    spec = importlib.util.spec_from_file_location(f'timm_tgr_bench_{name}', os.path.join(BENCHMARKS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session', name='load_script')
def load_script_fixture():
    """:func:`load_script` for the tests: ``load_script('reproduce')``."""
    return load_script
