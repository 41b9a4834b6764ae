"""The package's layering, read from the source: ``layers/`` and ``models/`` know nothing of training, the
command lines or the pictures (as timm's ``layers`` and ``models`` know nothing of its ``train.py``)."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'timm_tgr'
# what a model or a layer must never import: training-time code and the command lines
FORBIDDEN = ('timm_tgr.task', 'timm_tgr.train', 'timm_tgr.export', 'timm_tgr.visualize', 'timm_tgr.quickstart')


def imported_modules(source: str, module: str, is_package: bool = False):
    """Every module the code of ``module`` imports, anywhere (also inside functions), as absolute dotted names;
    ``from X import y`` counts both ``X`` and ``X.y`` (``y`` may be a submodule)."""
    package = module.split('.') if is_package else module.split('.')[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                base = '.'.join(package[:len(package) - (node.level - 1)] + ([base] if base else []))
            yield base
            yield from (f'{base}.{alias.name}' for alias in node.names)


def _imports_of(path: pathlib.Path):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    is_package = parts[-1] == '__init__'
    module = '.'.join(parts[:-1] if is_package else parts)
    return imported_modules(path.read_text(), module, is_package)


def _is_forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + '.') for f in FORBIDDEN)


SOURCES = sorted(p for sub in ('layers', 'models') for p in (PACKAGE / sub).rglob('*.py'))


def test_the_rule_sees_relative_and_deferred_imports():
    """The checker itself: relative imports resolve against the module's package, imports inside functions count."""
    source = 'import torch\ndef f():\n    from ..task.timm_train import create_task\n    from .. import export\n'
    names = set(imported_modules(source, 'timm_tgr.models.sample'))
    assert {'torch', 'timm_tgr.task.timm_train', 'timm_tgr.export'} <= names
    assert set(imported_modules('from . import losses\n', 'timm_tgr.layers', is_package=True)) == {
        'timm_tgr.layers', 'timm_tgr.layers.losses'}
    assert all(_is_forbidden(n) for n in ('timm_tgr.task.timm_train', 'timm_tgr.export', 'timm_tgr.train'))
    assert not any(_is_forbidden(n) for n in ('timm_tgr.utils.checkpoint', 'timm_tgr.layers', 'timm_tgr.trainer'))


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_and_models_do_not_import_training_or_command_lines(path):
    bad = sorted({n for n in _imports_of(path) if _is_forbidden(n)})
    assert not bad, f'{path.relative_to(PACKAGE)} imports {bad}: models and layers must not know training'


def test_every_layer_and_model_module_is_checked():
    names = {p.relative_to(PACKAGE).as_posix() for p in SOURCES}
    assert {'layers/sparse_moe.py', 'models/vmoe_deit.py', 'models/_moe_vit.py', 'models/_builder.py',
            'models/upcycle.py', 'models/_factory.py'} <= names
