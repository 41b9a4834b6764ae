"""The command-line entry points' error handling: a failure the user can fix ends as one ``error:`` line.

Every error this package raises for a bad input says what went wrong and how to fix it; a traceback in
front of it only hides that line. ``run_cli`` prints ``<prog>: error: <message>`` and exits with status 1
(argparse's own errors keep their status 2). ``TIMM_TGR_TRACEBACK=1`` shows the full traceback, for bug
reports. ``torch_threads`` sets a command's ``--threads`` for its run and gives in-process callers theirs back.
"""
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch

__all__ = ['run_cli', 'torch_threads']


@contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` (None or 0: unchanged) inside the block, restored after it
    (in-process callers such as the quickstart or the study harness get their own count back)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(main: Callable[[], object], prog: str) -> None:
    """Run ``main()``; an exception becomes ``<prog>: error: <message>`` on stderr and exit status 1."""
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the message is the interface; TIMM_TGR_TRACEBACK=1 shows the rest
        if os.environ.get('TIMM_TGR_TRACEBACK'):
            raise
        print(f'{prog}: error: {e}\n(set TIMM_TGR_TRACEBACK=1 for the full traceback)', file=sys.stderr)
        sys.exit(1)
