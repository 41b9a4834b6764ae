"""What the benchmark scripts record about the machine they ran on."""
import os
import platform


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
