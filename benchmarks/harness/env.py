"""What the benchmark scripts record about the machine and the code they ran on."""
import os
import platform
import subprocess
from typing import Optional


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return name or f'unknown CPU ({os.cpu_count()} logical cores)'


def device_name(device: str) -> str:
    """The GPU's name and CUDA version, or the CPU's name, cores and torch threads."""
    import torch
    if device.startswith('cuda') and torch.cuda.is_available():
        return f'{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})'
    return f'CPU: {cpu_model_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}'


def start_study(parser, argv=None):
    """A study script's start: ``(argv, args)`` parsed by ``parser``, timm's logging set up, the models registered,
    ``args.output`` created."""
    import logging
    import sys
    from timm.utils import setup_default_logging
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not logging.root.handlers:
        setup_default_logging()
    import timm_tgr  # noqa: F401  (registers the models)
    os.makedirs(args.output, exist_ok=True)
    return argv, args


def git_revision(root: str) -> Optional[str]:
    """The checkout's short commit, with ``+uncommitted changes`` when tracked files differ; None outside git."""
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ('+uncommitted changes' if dirty else '')) if rev else None
    except Exception:
        return None
