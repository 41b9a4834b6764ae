"""Every command the docs show uses flags its program has: each flag of each ``bash`` block's command line, in
README.md, BENCHMARKS.md, CONTRIBUTING.md, every page of docs/ and every study write-up in benchmarks/results/, must
appear in that program's ``--help``; and every relative link of those pages leads to a file (and heading) that
exists."""
import contextlib
import glob
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
# the documentation: what a user or a contributor reads
DOCS = ['README.md', 'BENCHMARKS.md', 'CONTRIBUTING.md'] + sorted(
    os.path.relpath(p, ROOT) for pattern in ('docs/**/*.md', 'benchmarks/results/*/README.md')
    for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _read(doc):
    with open(os.path.join(ROOT, doc)) as f:
        return f.read()


def _commands():
    """(doc, program, argv) of every command line in the docs' bash blocks that runs one of ours."""
    out = []
    for doc in DOCS:
        for block in re.findall(r'```bash\n(.*?)```', _read(doc), re.S):
            for line in block.replace('\\\n', ' ').splitlines():
                line = line.split(' #')[0].strip()
                if not line or line.startswith('#'):
                    continue
                argv = shlex.split(line.replace('[', '').replace(']', ''))
                found = _program(argv)
                if found is not None:
                    out.append((doc, found[0], argv[found[1]:]))
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


def test_the_docs_are_found():
    assert {'docs/models.md', 'docs/training.md', 'docs/troubleshooting.md', 'docs/results.md',
            'benchmarks/results/cpu_recipe/README.md'} <= set(DOCS), DOCS


def test_docs_show_commands_of_every_entry_point():
    programs = {p for _, p, _ in COMMANDS}
    assert {'train', 'quickstart', 'export', 'visualize', 'benchmarks/reproduce', 'benchmarks/throughput',
            'benchmarks/transfer', 'benchmarks/upcycle', 'benchmarks/eval_capacity'} <= programs, programs
    assert {'train', 'quickstart', 'export', 'visualize'} <= {p for d, p, _ in COMMANDS if d == 'README.md'}


def test_readme_keeps_the_commands_ci_runs():
    """.ci/run runs README's test command; the quickstart is the other of "the two commands"."""
    readme = _read('README.md')
    assert 'python -m pytest -q ' in readme and 'python -m timm_tgr.quickstart ' in readme
    assert 'python -m pytest -q' in _read('.ci/run')


def test_readme_indexes_every_docs_page():
    readme = _read('README.md')
    pages = [d for d in DOCS if d.startswith('docs/')]
    assert [p for p in pages if f']({p})' not in readme] == []


@pytest.mark.parametrize('doc, program, argv', COMMANDS,
                         ids=[f"{d}: {p} {' '.join(a)}"[:100] for d, p, a in COMMANDS])
def test_doc_command_flags_exist(doc, program, argv):
    text = _help(program)
    missing = [f for f in _flags(argv, program) if not re.search(r'(?<![\w-])' + re.escape(f) + r'(?![\w-])', text)]
    assert not missing, f'{doc} runs {program} with {missing}, which its --help does not list'


def _anchors(doc):
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces as hyphens)."""
    text = re.sub(r'```.*?```', '', _read(doc), flags=re.S)
    return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-')
            for h in re.findall(r'^#{1,6} (.*)$', text, re.M)}


LINKS = [(doc, target) for doc in DOCS
         for target in re.findall(r'\]\(([^)\s]+)\)', re.sub(r'```.*?```', '', _read(doc), flags=re.S))
         if not re.match(r'[a-z]+:', target)]


@pytest.mark.parametrize('doc, target', LINKS, ids=[f'{d} -> {t}'[:100] for d, t in LINKS])
def test_doc_links_resolve(doc, target):
    path, _, anchor = target.partition('#')
    dest = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
    assert os.path.exists(os.path.join(ROOT, dest)), f'{doc} links to {target}: {dest} does not exist'
    if anchor and dest.endswith('.md'):
        assert anchor in _anchors(dest), f'{doc} links to {target}: {dest} has no heading #{anchor}'
