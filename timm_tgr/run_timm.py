"""Run any of timm's scripts with the plugin's models registered: ``python -m timm_tgr.run_timm SCRIPT [ARGS...]``.

pytorch-image-models' ``validate.py``, ``benchmark.py``, ``inference.py`` (and any other script that calls
``timm.create_model``) know only the models registered when they run; only ``train.py`` has ``--device-modules``.
This launcher imports :mod:`timm_tgr` (which registers its models and does nothing else) and then runs ``SCRIPT``
as ``__main__`` with ``ARGS`` as its command line, as ``python SCRIPT ARGS`` would (``sys.argv[0]`` is the script,
its folder is first on ``sys.path``). ``-m MODULE`` runs a module instead of a file::

    python -m timm_tgr.run_timm validate.py --model local-dir:exported/ --data-dir /data/imagenet
    python -m timm_tgr.run_timm benchmark.py --model vmoe_deit_small --bench inference

For ``train.py`` use its own hook instead: ``python train.py --device-modules timm_tgr.timm_train_hook ...`` also
makes its training tasks MoE-aware (:mod:`timm_tgr.timm_train_hook`).
"""
import argparse
import os
import runpy
import sys
from typing import List, Optional, Sequence

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m timm_tgr.run_timm',
        description="Run a timm script (validate.py, benchmark.py, inference.py, ...) with timm_tgr's models "
                    "registered: the script runs as __main__ with the arguments that follow it.")
    parser.add_argument('-m', dest='module', metavar='MODULE',
                        help='run this module as __main__ (as python -m MODULE) instead of a script file')
    parser.add_argument('script', nargs='?', metavar='SCRIPT', help="path of the script, e.g. timm's validate.py")
    parser.add_argument('args', nargs=argparse.REMAINDER, metavar='ARGS', help="the script's own arguments")
    return parser


def _split(argv: List[str]):
    """``(module, script, script_args)``: the launcher's options end at the script (or the ``-m`` module), so every
    argument after it, ``--help`` included, is the script's."""
    if argv[:1] == ['-m'] and len(argv) > 1:
        return argv[1], None, argv[2:]
    if argv and argv[0].startswith('-m') and len(argv[0]) > 2:
        return argv[0][2:], None, argv[1:]
    if argv and not argv[0].startswith('-'):
        return None, argv[0], argv[1:]
    build_parser().parse_args(argv)  # --help, or an error naming the bad option
    build_parser().error('give the timm script to run (e.g. validate.py), or -m MODULE')


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    module, script, script_args = _split(argv)
    import timm_tgr  # noqa: F401  (registers the models with timm; no other effect)

    if module is not None:
        sys.argv = [module] + script_args
        runpy.run_module(module, run_name='__main__', alter_sys=True)
        return
    if not os.path.isfile(script):
        build_parser().error(f'{script} is not a file: give the path of the timm script, e.g. '
                             f'path/to/pytorch-image-models/validate.py')
    sys.argv = [script] + script_args
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
