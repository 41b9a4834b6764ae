"""timm's scripts with the plugin: the launcher ``python -m timm_tgr.run_timm SCRIPT ARGS`` (stub scripts stand in
for validate.py / benchmark.py, which timm's wheel does not ship), and the train.py hook
``--device-modules timm_tgr.timm_train_hook`` (a stub train.py that imports its device modules as timm's does):
``import timm_tgr`` alone changes nothing in the host script; the deprecated ``--device-modules timm_tgr`` still
installs, with a warning."""
import os
import subprocess
import sys
import textwrap

import pytest

from timm_tgr import run_timm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a stand-in for validate.py / benchmark.py: parses its own flags, creates the model by name as they do
STUB_SCRIPT = textwrap.dedent('''
    import argparse, os, sys
    import timm
    parser = argparse.ArgumentParser()
    parser.add_argument('--model')
    parser.add_argument('--batch-size', type=int, default=1)
    args = parser.parse_args()
    assert __name__ == '__main__'
    assert sys.path[0] == os.path.dirname(os.path.abspath(__file__))
    model = timm.create_model(args.model, img_size=32, patch_size=8)
    print('RAN', os.path.basename(sys.argv[0]), args.model, args.batch_size, type(model).__name__)
''')

# a stand-in for pytorch-image-models' train.py: the names the plugin looks at, and its --device-modules import
STUB_TRAIN = textwrap.dedent('''
    import importlib, sys
    from timm.task import ClassificationTask
    def train_one_epoch(*args, **kwargs):
        pass
    def main():
        for module in sys.argv[1:]:
            if module == 'plain-import':
                import timm_tgr  # noqa: F401
            else:
                importlib.import_module(module)
        task = ClassificationTask
        print('TASK', 'timm' if task.__module__.startswith('timm.') else task.__name__)
    if __name__ == '__main__':
        main()
''')


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _run(*argv, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_launcher_runs_a_script_as_main_with_its_arguments(tmp_path, monkeypatch, capsys):
    script = _write(tmp_path, 'validate.py', STUB_SCRIPT)
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    run_timm.main([script, '--model', 'vmoe_deit_tiny', '--batch-size', '4'])
    assert 'RAN validate.py vmoe_deit_tiny 4 VMoEVisionTransformer' in capsys.readouterr().out


def test_launcher_from_the_command_line(tmp_path):
    """``python -m timm_tgr.run_timm benchmark.py ...`` in a fresh process: the models are known to the script."""
    script = _write(tmp_path, 'benchmark.py', STUB_SCRIPT)
    done = _run('-m', 'timm_tgr.run_timm', script, '--model', 'soft_moe_deit_tiny', cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert 'RAN benchmark.py soft_moe_deit_tiny 1 SoftMoEVisionTransformer' in done.stdout


def test_launcher_runs_a_module(tmp_path, monkeypatch, capsys):
    _write(tmp_path, 'stub_bench.py', STUB_SCRIPT.replace(
        "assert sys.path[0] == os.path.dirname(os.path.abspath(__file__))", ''))
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', [str(tmp_path)] + sys.path)
    run_timm.main(['-m', 'stub_bench', '--model', 'ec_moe_deit_tiny'])
    assert 'RAN stub_bench.py ec_moe_deit_tiny 1 ExpertChoiceVisionTransformer' in capsys.readouterr().out


def test_launcher_arguments_after_the_script_are_the_scripts(tmp_path, monkeypatch, capsys):
    """``--help`` after the script is the script's; before it, the launcher's."""
    script = _write(tmp_path, 'validate.py', STUB_SCRIPT)
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    with pytest.raises(SystemExit):
        run_timm.main([script, '--help'])
    assert '--batch-size' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_timm.main(['--help'])
    assert 'timm script' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [([], 'give the timm script'), (['nowhere/validate.py'], 'is not a file')])
def test_launcher_errors_name_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        run_timm.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize('device_modules, task, deprecated', [
    (['timm_tgr.timm_train_hook'], 'create_task', False),
    (['timm_tgr'], 'create_task', True),          # the old spelling: still works, with a warning
    (['plain-import'], 'timm', False),            # ``import timm_tgr`` changes nothing in the host script
    (['timm_tgr.run_timm'], 'timm', False),       # nor does importing any other module of the package
])
def test_train_hook(tmp_path, device_modules, task, deprecated):
    train = _write(tmp_path, 'train.py', STUB_TRAIN)
    done = _run(train, *device_modules, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f'TASK {task}' in done.stdout
    assert ('--device-modules timm_tgr.timm_train_hook' in done.stderr and 'deprecated' in done.stderr) == deprecated


def test_train_hook_through_the_launcher(tmp_path):
    """The launcher runs train.py as ``__main__`` too, so its hook finds train.py's tasks."""
    train = _write(tmp_path, 'train.py', STUB_TRAIN)
    done = _run('-m', 'timm_tgr.run_timm', train, 'timm_tgr.timm_train_hook', cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert 'TASK create_task' in done.stdout


def test_train_hook_elsewhere_changes_nothing_and_says_so(tmp_path):
    done = _run('-c', 'import timm_tgr.timm_train_hook as h; print("INSTALLED", h.installed)', cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert 'INSTALLED False' in done.stdout and "not timm's train.py" in done.stderr
