"""The command-line entry points' error handling: a failure the user can fix ends as one ``error:`` line.

Every error this package raises for a bad input says what went wrong and how to fix it; a traceback in
front of it only hides that line. ``run_cli`` prints ``<prog>: error: <message>`` and exits with status 1.
A bad flag (:class:`ArgumentParser`) is one line too, ``<prog>: error: <message> (<prog> --help lists the
flags)``, with argparse's status 2 and no usage block (``--help`` prints it on request). Ctrl-C exits with 130
and, when the command says it, which checkpoint to continue from. ``TIMM_TGR_TRACEBACK=1`` shows the full
traceback, for bug reports. ``torch_threads`` sets a command's ``--threads`` for its run and gives in-process
callers theirs back. :class:`ParseKwargs` reads ``key=value`` flags, naming the flag of a value without ``=``.
"""
import argparse
import ast
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch

__all__ = ['run_cli', 'torch_threads', 'ArgumentParser', 'ParseKwargs']


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line naming the fix (status 2), without the usage block."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} ({self.prog} --help lists the flags)\n')


class ParseKwargs(argparse.Action):
    """``--x-kwargs k=v k2=v2`` as a dict (values read as Python literals, else strings), like timm's
    ParseKwargs; an item without ``=`` or a YAML value that is not a mapping is a parser error naming the flag."""

    def __call__(self, parser, namespace, values, option_string=None):
        kw = {}
        for item in values:
            key, sep, value = str(item).partition('=')
            if not sep or not key:
                parser.error(f'{option_string} takes key=value items, got {item!r}: write e.g. '
                             f'{option_string} {key or "name"}=VALUE')
            try:
                kw[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kw[key] = value
        setattr(namespace, self.dest, kw)


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
    except KeyboardInterrupt as e:
        print(f'{prog}: interrupted' + (f': {e}' if str(e) else ''), file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the message is the interface; TIMM_TGR_TRACEBACK=1 shows the rest
        if os.environ.get('TIMM_TGR_TRACEBACK'):
            raise
        print(f'{prog}: error: {e}\n(set TIMM_TGR_TRACEBACK=1 for the full traceback)', file=sys.stderr)
        sys.exit(1)
