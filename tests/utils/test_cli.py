"""The command lines end a fixable failure with one error line and status 1, not a traceback."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, tmp_path, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=str(tmp_path),
                          env={**os.environ, 'PYTHONPATH': ROOT, **env}, timeout=300)


@pytest.mark.parametrize('command', [
    [os.path.join(ROOT, 'train_tgr.py'), '--dataset', '', '--data-dir', 'no-such-dir'],
    ['-m', 'timm_tgr.train', '--dataset', '', '--data-dir', 'no-such-dir'],
])
def test_trainer_error_is_one_line(command, tmp_path):
    r = _run(command, tmp_path)
    assert r.returncode == 1, r.stderr
    assert 'Traceback' not in r.stderr
    assert 'train_tgr.py: error: ' in r.stderr and 'no-such-dir' in r.stderr
    assert 'TIMM_TGR_TRACEBACK=1' in r.stderr


def test_export_error_is_one_line_and_traceback_on_request(tmp_path):
    (tmp_path / 'empty.pth.tar').write_bytes(b'')
    r = _run(['-m', 'timm_tgr.export', 'empty.pth.tar', '--out', 'x'], tmp_path)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert 'python -m timm_tgr.export: error: checkpoint empty.pth.tar is empty (0 bytes)' in r.stderr
    assert not (tmp_path / 'x').exists()
    r = _run(['-m', 'timm_tgr.export', 'empty.pth.tar', '--out', 'x'], tmp_path, TIMM_TGR_TRACEBACK='1')
    assert r.returncode == 1 and 'Traceback' in r.stderr


def test_argparse_errors_keep_status_2(tmp_path):
    r = _run([os.path.join(ROOT, 'train_tgr.py'), '--epochs', '0'], tmp_path)
    assert r.returncode == 2 and '--epochs must be >= 1' in r.stderr


def test_torch_threads_sets_and_restores_even_on_error():
    from timm_tgr.utils.cli import torch_threads
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(ValueError):
        with torch_threads(target):
            assert torch.get_num_threads() == target
            raise ValueError('boom')
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
