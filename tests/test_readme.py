"""Every command README.md shows uses flags its program has: each flag of each ``bash`` block's command line must
appear in that program's ``--help``."""
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, 'benchmarks')


def _commands():
    """(program, argv) of every command line in README's bash blocks that runs one of ours."""
    with open(os.path.join(ROOT, 'README.md')) as f:
        blocks = re.findall(r'```bash\n(.*?)```', f.read(), re.S)
    out = []
    for block in blocks:
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.split(' #')[0].strip()
            if not line or line.startswith('#'):
                continue
            argv = shlex.split(line.replace('[', '').replace(']', ''))
            found = _program(argv)
            if found is not None:
                out.append((found[0], argv[found[1]:]))
    return out


def _program(argv):
    """Which of our command lines ``argv`` runs ('train', 'export', ..., 'benchmarks/<script>', else None) and
    where its own arguments start (a launcher's, e.g. torchrun's, come before)."""
    for i, a in enumerate(argv):
        if a.endswith('train_tgr.py') or a == 'timm-tgr-train':
            return 'train', i + 1
        if a == '-m' and i + 1 < len(argv) and argv[i + 1].startswith('timm_tgr.'):
            return argv[i + 1].split('.', 1)[1], i + 2
        if a.startswith('benchmarks/') and a.endswith('.py'):
            return a[:-3], i + 1
    return None


def _flags(argv, program=''):
    """The options of a command line (up to --extra, whose rest goes to another program; for the timm script
    launcher up to the script, whose arguments are the script's)."""
    flags = []
    for a in argv:
        if a == '--extra' or (program == 'run_timm' and not a.startswith('-')):
            break
        if re.match(r'^--?[a-zA-Z]', a):
            flags.append(a.split('=')[0])
    return flags


def _help(program):
    """The program's --help text."""
    if program.startswith('benchmarks/'):
        if BENCHMARKS not in sys.path:
            sys.path.insert(0, BENCHMARKS)
        spec = importlib.util.spec_from_file_location(f'readme_{program[11:]}', os.path.join(ROOT, program + '.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        show = (lambda: module.build_parser().parse_args(['--help'])) if hasattr(module, 'build_parser') \
            else (lambda: module.parse_args(['--help']))
    else:
        module = importlib.import_module({'train': 'timm_tgr.train.args', 'visualize': 'timm_tgr.visualize.cli'}.get(
            program, f'timm_tgr.{program}'))
        factory = getattr(module, 'build_parser', None) or getattr(module, '_parser')
        show = lambda: factory().parse_args(['--help'])  # noqa: E731
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        show()
    return buf.getvalue()


COMMANDS = _commands()


def test_readme_shows_commands_of_every_entry_point():
    programs = {p for p, _ in COMMANDS}
    assert {'train', 'quickstart', 'export', 'visualize', 'benchmarks/reproduce'} <= programs, programs


@pytest.mark.parametrize('program, argv', COMMANDS, ids=[f"{p} {' '.join(a)}"[:80] for p, a in COMMANDS])
def test_readme_command_flags_exist(program, argv):
    text = _help(program)
    missing = [f for f in _flags(argv, program) if not re.search(r'(?<![\w-])' + re.escape(f) + r'(?![\w-])', text)]
    assert not missing, f'README runs {program} with {missing}, which its --help does not list'
