"""Bad inputs and faults of the trainer and the export: each gets a message naming the cause and the fix, and
nothing is lost (the files of earlier runs are byte-equal before and after, a good checkpoint stays the resume
point). The tables are meant to grow: a new flag adds a row."""
import argparse
import csv
import errno
import gzip
import os
import pathlib
import shutil
import stat
import time

import pytest
import safetensors.torch
import torch

import timm_tgr  # noqa: F401
from test_export import _offline  # switches the Hugging Face hub offline onto an (empty) cache
from timm_tgr.data import write_idx
from timm_tgr.export import main as export_main
from timm_tgr.train import main as train_main, parse_args, read_metrics
from timm_tgr.utils.checkpoint import CheckpointWriteError, NonFiniteError, run_outputs

# a tiny V-MoE without a teacher: the fastest real run (3 classes of 16x16 grayscale images)
TINY = [
    '--dataset', '', '--model', 'vmoe_deit_tiny',
    '--model-kwargs', 'embed_dim=32', 'num_heads=2', 'patch_size=4', 'num_experts=4',
    '--img-size', '16', '--in-chans', '1', '--num-classes', '3', '--mean', '0.5', '--std', '0.25', '--teacher', 'none',
    '-b', '8', '-j', '0', '--warmup-epochs', '1', '--probe-samples', '8', '--no-progress', '--checkpoint-hist', '10',
    '--threads', '1', '--no-plot',
]
# the same student guided by a tiny random teacher
TEACHER = ['--teacher', 'deit3_small_patch16_224', '--teacher-kwargs', 'embed_dim=32', 'num_heads=2', 'patch_size=4',
           'img_size=16', 'in_chans=1', 'num_classes=3', '--no-teacher-pretrained']


def _argv(image_folder, out, name, *extra):
    return TINY + ['--data-dir', image_folder, '--output', str(out), '--experiment', name, *extra]


@pytest.fixture(scope='module')
def done(image_folder, tmp_path_factory):
    """A finished 2-epoch run (checkpoints of epochs 0 and 1), kept read-only by the tests (they copy it)."""
    out = tmp_path_factory.mktemp('done')
    train_main(_argv(image_folder, out, 'run', '--epochs', '2'))
    return out / 'run'


def _copy_run(done, tmp_path, name='run'):
    dst = tmp_path / name
    shutil.copytree(done, dst)
    return dst


def _files(folder):
    """{relative path: bytes} of every file under ``folder``: what 'nothing lost' compares."""
    folder = pathlib.Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def _summary_epochs(run):
    with open(run / 'summary.csv', newline='') as f:
        return [int(r['epoch']) for r in csv.DictReader(f)]


# --------------------------------------------------------------------------------------------------
# flags refused by the parser, before anything is built or written
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('argv, message', [
    (['--lr', 'nan'], '--lr must be >= 0.0 (a finite number), got nan'),
    (['--lr', '-1'], '--lr must be >= 0.0'),
    (['--distill-weight', '-5'], '--distill-weight must be >= 0.0 (a finite number), got -5.0'),
    (['--distill-weight', 'inf'], '--distill-weight must be >= 0.0 (a finite number), got inf'),
    (['--teacher-load-weight', 'nan'], '--teacher-load-weight must be >= 0.0'),
    (['--teacher-entropy-weight', '-1'], '--teacher-entropy-weight must be >= 0.0'),
    (['--weight-decay', '-0.1'], '--weight-decay must be >= 0.0'),
    (['--smoothing', '1.5'], '--smoothing must be in [0.0, 1.0]'),
    (['--drop-path', '2'], '--drop-path must be in [0.0, 1.0]'),
    (['--clip-grad', '0'], '--clip-grad must be > 0.0'),
    (['--checkpoint-hist', '0'], '--checkpoint-hist must be >= 1'),
    (['--log-interval', '0'], '--log-interval must be >= 1'),
    (['-vb', '0'], '--validation-batch-size must be >= 1'),
    (['--model-ema-decay', '1.5'], '--model-ema-decay must be in [0.0, 1.0]'),
    (['--probe-samples', '-1'], '--probe-samples must be >= 0'),
    (['--upcycle-from', 'deit_tiny_patch16_224.fb_in1k', '--pretrained'],
     "--upcycle-from 'deit_tiny_patch16_224.fb_in1k' and --pretrained both give the model its starting weights"),
    (['--initial-checkpoint', '/no/such.pth'], '--initial-checkpoint \'/no/such.pth\': no such file'),
    (['--model-kwargs', 'num_experts'], "--model-kwargs takes key=value items, got 'num_experts': write e.g. "
                                        '--model-kwargs num_experts=VALUE'),
])
def test_bad_flags_are_refused_by_the_parser(argv, message, capsys):
    t0 = time.time()
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
    assert time.time() - t0 < 10  # --upcycle-from with --pretrained: no Hub access before the conflict


def test_a_bad_flag_is_one_line_with_status_2_and_no_usage(capsys):
    """docs/troubleshooting.md: a bad flag ends with one error line and argparse's status 2; the usage comes with
    --help only."""
    with pytest.raises(SystemExit) as e:
        parse_args(['--epochs', '0'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'usage:' not in err and err.count('\n') == 1
    assert err.startswith('train_tgr.py: error: --epochs must be >= 1') and 'train_tgr.py --help lists the flags' in err


def test_a_config_whose_kwargs_are_not_a_mapping_is_refused(tmp_path, capsys):
    (tmp_path / 'c.yaml').write_text('model_kwargs: [1, 2]\n')
    with pytest.raises(SystemExit):
        parse_args(['-c', str(tmp_path / 'c.yaml')])
    assert 'model_kwargs must be a mapping of keyword to value (e.g. model_kwargs: {num_experts: 8}), got [1, 2]' \
        in capsys.readouterr().err


@pytest.mark.parametrize('extra, message', [
    (['--model-kwargs', 'embed_dim=32', 'num_heads=3', 'patch_size=4', 'num_experts=4'],
     'The width (embed_dim) must be a multiple of num_heads: pass --model-kwargs num_heads=H'),
    (['--lr', '1e38', '--warmup-epochs', '0'], '--lr 1e+38 is too large for --opt adamw: its first update steps by '),
])
def test_flags_that_cannot_build_or_train_the_model_name_the_flag(image_folder, tmp_path, extra, message):
    with pytest.raises(ValueError) as e:
        train_main(_argv(image_folder, tmp_path, 'x', '--epochs', '1', *extra))
    assert message in str(e.value)
    assert not run_outputs(tmp_path / 'x')


# --------------------------------------------------------------------------------------------------
# an earlier run's folder: never written into
# --------------------------------------------------------------------------------------------------
def test_existing_run_folder_without_resume_is_refused_and_kept(image_folder, done, tmp_path, capsys):
    run = _copy_run(done, tmp_path)
    before = _files(run)
    with pytest.raises(SystemExit):
        train_main(_argv(image_folder, tmp_path, 'run', '--epochs', '1'))
    err = capsys.readouterr().err
    assert 'holds an earlier run' in err and f'--resume {run / "last.pth.tar"}' in err and 'another --experiment' in err
    assert _files(run) == before


def test_resume_into_another_runs_folder_is_refused(image_folder, done, tmp_path, capsys):
    other = _copy_run(done, tmp_path, 'other')
    before = _files(other)
    with pytest.raises(SystemExit):
        train_main(_argv(image_folder, tmp_path, 'other', '--epochs', '2',
                         '--resume', str(done / 'checkpoint-0.pth.tar')))
    assert 'holds another run' in capsys.readouterr().err
    assert _files(other) == before


def test_a_second_trainer_on_a_running_runs_folder_stops_naming_it(image_folder, tmp_path):
    """The folder of a run in progress is locked for its whole run: a second trainer started on it (same --output /
    --experiment, before the first has written any checkpoint) stops before writing, naming the running one."""
    from timm_tgr.train.lock import RunFolderBusy, RunLock
    folder = tmp_path / 'run'
    folder.mkdir()
    with RunLock(str(folder)):  # the running trainer
        before = _files(folder)
        with pytest.raises(RunFolderBusy) as e:
            train_main(_argv(image_folder, tmp_path, 'run', '--epochs', '1'))
        assert _files(folder) == before
    msg = str(e.value)
    assert f'the run folder {folder} is in use by another train_tgr.py run (pid {os.getpid()} on ' in msg
    assert 'another --experiment or --output' in msg
    train_main(_argv(image_folder, tmp_path, 'run', '--epochs', '1'))  # once it ended, the folder is free
    assert not (folder / '.lock').exists()


def test_a_folder_with_records_but_no_checkpoint_is_started_again(image_folder, done, tmp_path):
    """A run stopped before its first checkpoint leaves metrics.jsonl: nothing to --resume, so a rerun of the same
    command starts the run there again (it was refused, told to --resume a last.pth.tar that does not exist)."""
    run = _copy_run(done, tmp_path)
    for p in run.glob('*.pth.tar'):
        p.unlink()
    result = train_main(_argv(image_folder, tmp_path, 'run', '--epochs', '1'))
    assert [r['epoch'] for r in result['rows']] == [0] and _summary_epochs(run) == [0]
    assert torch.load(run / 'last.pth.tar', weights_only=False)['epoch'] == 0


def test_an_earlier_run_without_last_names_a_checkpoint_that_exists(image_folder, done, tmp_path, capsys):
    run = _copy_run(done, tmp_path)
    (run / 'last.pth.tar').unlink()
    with pytest.raises(SystemExit):
        train_main(_argv(image_folder, tmp_path, 'run', '--epochs', '1'))
    assert f'continue it with --resume {run / "checkpoint-1.pth.tar"}' in capsys.readouterr().err


def test_time_stamped_folders_never_collide(image_folder, tmp_path, monkeypatch):
    """Without --experiment the folder is named by the time; a name already taken gets a numeric suffix."""
    monkeypatch.setattr(time, 'strftime', lambda fmt, *a: '20260101-000000')
    argv = [a for a in TINY] + ['--data-dir', image_folder, '--output', str(tmp_path), '--epochs', '1']
    first = train_main(argv)['output_dir']
    before = _files(first)
    second = train_main(argv)['output_dir']
    assert first.endswith('20260101-000000-vmoe_deit_tiny') and second == first + '-1'
    assert _files(first) == before


# --------------------------------------------------------------------------------------------------
# resume: corrupt or mismatched checkpoints, flags changed on resume, summary.csv
# --------------------------------------------------------------------------------------------------
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _empty(path):
    path.write_bytes(b'')


@pytest.mark.parametrize('damage, extra, error, message', [
    (_truncate, [], RuntimeError, 'is truncated, corrupt or not a checkpoint'),
    (_empty, [], RuntimeError, 'is empty (0 bytes)'),
    (None, TEACHER, ValueError, '--teacher (the run: None; this command: deit3_small_patch16_224)'),
    (None, ['--model-kwargs', 'embed_dim=32', 'num_heads=2', 'patch_size=4', 'num_experts=8'], ValueError,
     '--model-kwargs num_experts (the run: 4; this command: 8)'),
    (None, ['--opt', 'sgd'], ValueError, '--opt (the run: adamw; this command: sgd)'),
])
def test_bad_resume_names_the_file_and_the_fix(image_folder, done, tmp_path, damage, extra, error, message):
    run = _copy_run(done, tmp_path)
    ckpt = run / 'checkpoint-0.pth.tar'
    if damage is not None:
        damage(ckpt)
    before = _files(run)
    with pytest.raises(error) as e:
        train_main(TINY + ['--data-dir', image_folder, '--epochs', '2', '--resume', str(ckpt), *extra])
    assert message in str(e.value) and str(ckpt) in str(e.value)
    if damage is None:  # the ways out
        assert f'--initial-checkpoint {ckpt}' in str(e.value) and 'args.yaml' in str(e.value)
    assert _files(run) == before


def test_resume_with_another_lr_honours_it_and_keeps_the_record(image_folder, done, tmp_path):
    """--lr on resume drives the remaining epochs (as a run started with it would at that epoch), and args.yaml
    keeps the earlier flags beside it."""
    run = _copy_run(done, tmp_path)
    resumed = train_main(TINY + ['--data-dir', image_folder, '--epochs', '2', '--lr', '1e-3',
                                 '--resume', str(run / 'checkpoint-0.pth.tar')])
    reference = train_main(_argv(image_folder, tmp_path, 'ref', '--epochs', '2', '--lr', '1e-3'))
    assert resumed['rows'][-1]['epoch'] == 1
    assert resumed['rows'][-1]['lr'] == reference['rows'][1]['lr']
    assert read_metrics(done / 'metrics.jsonl')[1]['lr'] != reference['rows'][1]['lr']
    import yaml
    assert yaml.safe_load((run / 'args.yaml').read_text())['lr'] == 1e-3
    assert yaml.safe_load((run / 'args-to-epoch0.yaml').read_text())['lr'] == 5e-4
    assert _summary_epochs(run) == [0, 1]  # rewritten, never appended twice


def test_summary_has_no_duplicate_rows_after_resume(image_folder, done, tmp_path):
    run = _copy_run(done, tmp_path)
    train_main(TINY + ['--data-dir', image_folder, '--epochs', '2', '--resume', str(run / 'checkpoint-0.pth.tar')])
    assert _summary_epochs(run) == [0, 1]
    assert [r['epoch'] for r in read_metrics(run / 'metrics.jsonl')] == [0, 1]
    with open(run / 'summary.csv') as f:
        assert f.read().count('epoch,') == 1


class _Killed(BaseException):
    """kill -9 at that point: nothing after it runs (no except Exception, no cleanup of its temporary file)."""


def test_a_kill_during_the_last_epochs_model_best_save_is_completed_on_resume(image_folder, tmp_path, monkeypatch,
                                                                              caplog):
    """kill -9 between last.pth.tar and model_best.pth.tar of the last epoch (the best): --resume completes the
    save (model_best holds that epoch), removes the temporary file, and reports the run's real best."""
    from timm_tgr.train import run as run_module, run_folder, saver as saver_module, setup as setup_module
    later_is_better = lambda row, spec: float(row['epoch'])  # noqa: E731 - every epoch beats the one before
    for module in (run_module, setup_module, run_folder):
        monkeypatch.setattr(module, 'row_metric', later_is_better)
    replace, calls = os.replace, {'n': 0}

    def killed_at_second_model_best(src, dst):
        if str(dst).endswith('model_best.pth.tar'):
            calls['n'] += 1
            if calls['n'] == 2:
                raise _Killed()
        return replace(src, dst)

    monkeypatch.setattr(saver_module.os, 'replace', killed_at_second_model_best)
    out = tmp_path / 'k'
    with pytest.raises(_Killed):
        train_main(_argv(image_folder, tmp_path, 'k', '--epochs', '2'))
    monkeypatch.setattr(saver_module.os, 'replace', replace)
    assert torch.load(out / 'last.pth.tar', weights_only=False)['epoch'] == 1
    assert torch.load(out / 'model_best.pth.tar', weights_only=False)['epoch'] == 0  # stale: epoch 1 is the best
    assert [p.name for p in out.iterdir() if p.name.endswith('.tmp')]
    with caplog.at_level('INFO', logger='timm_tgr'):
        result = train_main(TINY + ['--data-dir', image_folder, '--epochs', '2', '--resume', str(out / 'last.pth.tar')])
    assert torch.load(out / 'model_best.pth.tar', weights_only=False)['epoch'] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith('.tmp')]
    assert (result['best_epoch'], result['best_metric']) == (1, 1.0)
    assert 'Nothing left to do: the run in' in caplog.text and 'Best top1 1.0 at epoch 1' in caplog.text
    export_main([str(out), '--out', str(tmp_path / 'e')])
    assert 'Checkpoint epoch: 1' in (tmp_path / 'e' / 'README.md').read_text()


def test_ctrl_c_names_the_checkpoint_to_resume_from(image_folder, tmp_path, monkeypatch, capsys):
    from timm_tgr.train import run as run_module
    from timm_tgr.utils.cli import run_cli
    run_epoch = run_module.run_epoch

    def ctrl_c_in_epoch_1(epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return run_epoch(epoch, *args)

    monkeypatch.setattr(run_module, 'run_epoch', ctrl_c_in_epoch_1)
    out = tmp_path / 'cc'
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: train_main(_argv(image_folder, tmp_path, 'cc', '--epochs', '3')), 'train_tgr.py')
    assert e.value.code == 130
    assert (f'train_tgr.py: interrupted: stopped in epoch 1; {out / "last.pth.tar"} (epoch 0) is the last '
            f'checkpoint: continue with --resume {out / "last.pth.tar"}') in capsys.readouterr().err
    assert not (out / '.lock').exists()


# --------------------------------------------------------------------------------------------------
# NaN / Inf: the run stops at the first non-finite value; the last finite checkpoint stays the resume point
# --------------------------------------------------------------------------------------------------
def test_a_diverging_resume_stops_and_keeps_every_file(image_folder, done, tmp_path):
    run = _copy_run(done, tmp_path)
    before = _files(run)
    ckpt = run / 'checkpoint-0.pth.tar'
    with pytest.raises(RuntimeError) as e:
        train_main(TINY + ['--data-dir', image_folder, '--epochs', '2', '--lr', '1e8', '--resume', str(ckpt)])
    msg = str(e.value)
    assert 'training diverged in epoch 1, step ' in msg and 'first non-finite values: ' in msg
    assert f'{ckpt} (epoch 0) is the last finite checkpoint' in msg and 'lower --lr (this run: 1e+08)' in msg
    assert _files(run) == before  # nothing of the diverged epoch written, nothing of the earlier run changed


def test_a_diverging_run_stops_in_its_first_epoch_without_checkpoints(image_folder, tmp_path):
    with pytest.raises(RuntimeError, match=r'training diverged in epoch 0, step \d+ of 3: first non-finite values: '
                                           r'.*No checkpoint of this run was written'):
        train_main(_argv(image_folder, tmp_path, 'nan', '--epochs', '2', '--lr', '1e8', '--warmup-epochs', '0'))
    assert not [p for p in (tmp_path / 'nan').iterdir() if p.name != 'args.yaml']


def test_non_finite_router_or_teacher_router_output_is_named(image_folder, tmp_path, monkeypatch):
    """A teacher router going non-finite stops the run at that step, naming it (checked on every step on CPU)."""
    from timm_tgr.task import teacher_router
    forward = teacher_router.TeacherRouter.forward
    calls = {'n': 0}

    def poisoned(self, h):
        calls['n'] += 1
        p = forward(self, h)
        return p * float('nan') if calls['n'] > 3 * 4 else p  # 3 teacher routers: from the 5th step on

    monkeypatch.setattr(teacher_router.TeacherRouter, 'forward', poisoned)
    with pytest.raises(RuntimeError) as e:
        train_main(_argv(image_folder, tmp_path, 'tr', '--epochs', '2', *TEACHER))
    msg = str(e.value)
    assert 'training diverged in epoch 1, step 1 of 3' in msg
    assert 'teacher router output of MoE block 7 (NaN/Inf)' in msg and 'teacher_router_loss = nan' in msg
    assert 'last.pth.tar (epoch 0) is the last finite checkpoint' in msg
    assert [r['epoch'] for r in read_metrics(tmp_path / 'tr' / 'metrics.jsonl')] == [0]


def test_fp16_scaler_skipped_steps_are_not_divergence():
    """Only the forward's values are watched: an update whose gradients overflow (a GradScaler skip) passes."""
    from timm_tgr.train.loop import FiniteGuard
    task = argparse.Namespace(get_trainable_module=lambda: torch.nn.Linear(1, 1))
    guard = FiniteGuard(task, epoch=0, num_batches=2, device=torch.device('cpu'))
    guard.observe({'loss': torch.tensor(1.0), 'output': torch.tensor([float('inf')])}, 0)
    guard.check()  # the logits are not a loss term; the loss is finite
    guard.observe({'loss': torch.tensor(float('inf'))}, 1)
    with pytest.raises(RuntimeError, match='step 1 of 2: first non-finite values: loss = inf'):
        guard.check()


def test_non_finite_weights_are_never_saved(image_folder, tmp_path, monkeypatch):
    """Weights that turn non-finite without a non-finite loss (the epoch's last update) are refused at the save:
    last.pth.tar stays epoch 0's, byte for byte, and the epoch's metrics row is taken back."""
    from timm_tgr.train import run as run_module
    run_epoch = run_module.run_epoch

    def poison_after_epoch_1(epoch, t, args, num_updates):
        row, n = run_epoch(epoch, t, args, num_updates)
        if epoch == 1:
            with torch.no_grad():
                t.model.head.weight[0, 0] = float('inf')
        return row, n

    monkeypatch.setattr(run_module, 'run_epoch', poison_after_epoch_1)
    out = tmp_path / 'w'
    with pytest.raises(NonFiniteError) as e:
        train_main(_argv(image_folder, tmp_path, 'w', '--epochs', '3', '--checkpoint-hist', '1'))
    assert 'the weights after epoch 1 hold NaN or Inf (state_dict.head.weight)' in str(e.value)
    assert f'{out / "last.pth.tar"} (epoch 0) is intact' in str(e.value)
    assert torch.load(out / 'last.pth.tar', weights_only=False)['epoch'] == 0
    assert [r['epoch'] for r in read_metrics(out / 'metrics.jsonl')] == [0] and _summary_epochs(out) == [0]


def test_non_finite_evaluation_stops_the_run_and_never_becomes_model_best(image_folder, tmp_path, monkeypatch):
    """Weights finite but every validation logit Inf / NaN (a huge classifier after epoch 1's last update): the
    run stops like a training NaN, naming the evaluation; epoch 0 stays last and model_best."""
    from timm_tgr.train import run as run_module
    train_one_epoch = run_module.train_one_epoch

    def huge_head_after_epoch_1(epoch, task, *args, **kwargs):
        out = train_one_epoch(epoch, task, *args, **kwargs)
        if epoch == 1:
            with torch.no_grad():
                task.get_trainable_module().head.weight.fill_(3e38)  # finite, but the logits overflow
        return out

    monkeypatch.setattr(run_module, 'train_one_epoch', huge_head_after_epoch_1)
    out = tmp_path / 'ev'
    with pytest.raises(RuntimeError) as e:
        train_main(_argv(image_folder, tmp_path, 'ev', '--epochs', '3'))
    msg = str(e.value)
    assert ('evaluation of the model after epoch 1 diverged: the validation logits hold NaN / Inf in 2 of 2 '
            'batches') in msg
    assert f'{out / "last.pth.tar"} (epoch 0) is the last finite checkpoint' in msg
    for name in ('last.pth.tar', 'model_best.pth.tar'):
        assert torch.load(out / name, weights_only=False)['epoch'] == 0
    assert [r['epoch'] for r in read_metrics(out / 'metrics.jsonl')] == [0]


# --------------------------------------------------------------------------------------------------
# a full disk: the error says so and where; no good checkpoint is replaced
# --------------------------------------------------------------------------------------------------
def _fail_second_save(monkeypatch, error):
    import timm.utils.checkpoint_saver as saver_module
    save, calls = torch.save, {'n': 0}

    def save_or_fail(obj, path, *args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 2:
            with open(path, 'wb') as f:
                f.write(b'PK\x03\x04 half a checkpoint')
            raise error
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(saver_module.torch, 'save', save_or_fail)


@pytest.mark.parametrize('error, message', [
    (RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 4000 vs 3866'),
     'the usual cause is a full disk'),
    (OSError(errno.ENOSPC, 'No space left on device'), 'the disk is full: no space left to write'),
])
def test_disk_full_on_save_keeps_the_last_good_checkpoint(image_folder, tmp_path, monkeypatch, error, message):
    out = tmp_path / 'full'
    _fail_second_save(monkeypatch, error)
    with pytest.raises(CheckpointWriteError) as e:
        train_main(_argv(image_folder, tmp_path, 'full', '--epochs', '3'))
    msg = str(e.value)
    assert message in msg and str(out) in msg and 'MB free there now' in msg
    assert f'{out / "last.pth.tar"} (epoch 0) is intact: continue from it with --resume' in msg
    for name in ('last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar'):
        assert torch.load(out / name, weights_only=False)['epoch'] == 0, name
    assert not (out / 'tmp.pth.tar').exists()
    assert [r['epoch'] for r in read_metrics(out / 'metrics.jsonl')] == [0] and _summary_epochs(out) == [0]
    monkeypatch.undo()  # the resume the message names continues the run
    result = train_main(TINY + ['--data-dir', image_folder, '--epochs', '3', '--resume', str(out / 'last.pth.tar')])
    assert [r['epoch'] for r in result['rows']] == [0, 1, 2] and _summary_epochs(out) == [0, 1, 2]


def test_disk_full_when_linking_model_best_keeps_the_old_one(image_folder, tmp_path, monkeypatch):
    import timm_tgr.train.saver as saver
    out = tmp_path / 'link'
    calls = {'n': 0}
    link = os.link

    def link_or_fail(src, dst):
        calls['n'] += 1
        if calls['n'] > 2:  # epoch 0: checkpoint-0 and model_best are linked; from epoch 1 on the disk is full
            raise OSError(errno.ENOSPC, 'No space left on device')
        return link(src, dst)

    monkeypatch.setattr(saver.os, 'link', link_or_fail)
    monkeypatch.setattr(saver.shutil, 'copy2', lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'full')))
    with pytest.raises(CheckpointWriteError) as e:
        train_main(_argv(image_folder, tmp_path, 'link', '--epochs', '3', '--checkpoint-hist', '5'))
    # last.pth.tar was saved before its copy failed: it is the resume point, and the epoch's row stays
    assert 'the disk is full' in str(e.value) and f'{out / "last.pth.tar"} (epoch 1) is intact' in str(e.value)
    assert torch.load(out / 'last.pth.tar', weights_only=False)['epoch'] == 1
    assert torch.load(out / 'model_best.pth.tar', weights_only=False)['epoch'] == 0
    assert [r['epoch'] for r in read_metrics(out / 'metrics.jsonl')] == [0, 1]
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]


# --------------------------------------------------------------------------------------------------
# starting weights: the same reader and messages as --resume
# --------------------------------------------------------------------------------------------------
def _nan_checkpoint(done, tmp_path):
    ckpt = torch.load(done / 'last.pth.tar', weights_only=False)
    ckpt['state_dict']['blocks.0.attn.qkv.weight'][0, 0] = float('nan')
    path = tmp_path / 'nan.pth.tar'
    torch.save(ckpt, path)
    return path


def _pickled_path_checkpoint(done, tmp_path):
    ckpt = torch.load(done / 'last.pth.tar', weights_only=False)
    ckpt['args'].output = pathlib.Path('/runs/out')  # an object weights_only refuses
    path = tmp_path / 'pickled.pth.tar'
    torch.save(ckpt, path)
    return path


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _malicious_checkpoint(done, tmp_path):
    ckpt = torch.load(done / 'last.pth.tar', weights_only=False)
    ckpt['hook'] = _RunsCode(tmp_path / 'code-ran')  # runs a shell command when unpickled without weights_only
    path = tmp_path / 'malicious.pth.tar'
    torch.save(ckpt, path)
    return path


def _truncated_copy(done, tmp_path):
    path = tmp_path / 'cut.pth.tar'
    data = (done / 'last.pth.tar').read_bytes()
    path.write_bytes(data[:len(data) // 3])
    return path


@pytest.mark.parametrize('make, flag, message', [
    (_nan_checkpoint, '--initial-checkpoint', 'holds non-finite values (NaN or Inf) in 1 of'),
    (_truncated_copy, '--initial-checkpoint', 'could not read --initial-checkpoint'),
    (_pickled_path_checkpoint, '--initial-checkpoint', 'rerun with --trust-checkpoint'),
    (_malicious_checkpoint, '--initial-checkpoint', 'torch.load(weights_only=True) refuses (it refers to '
                                                    'posix.system). If it is a checkpoint you made yourself, rerun '
                                                    'with --trust-checkpoint'),
    (_nan_checkpoint, '--resume', 'holds non-finite values (NaN or Inf) in 1 of'),
    (_truncated_copy, '--upcycle-from', 'could not read dense checkpoint'),
])
def test_bad_starting_weights_name_the_file(image_folder, done, tmp_path, make, flag, message):
    path = make(done, tmp_path)
    extra = [flag, str(path)]
    with pytest.raises((ValueError, RuntimeError)) as e:
        train_main(_argv(image_folder, tmp_path, 'x', '--epochs', '1', *extra) if flag != '--resume' else
                   TINY + ['--data-dir', image_folder, '--output', str(tmp_path), '--epochs', '2', *extra])
    assert message in str(e.value) and str(path) in str(e.value)
    assert not (tmp_path / 'code-ran').exists()
    if 'non-finite' in message:
        assert 'blocks.0.attn.qkv.weight' in str(e.value)


def test_inf_in_the_optimizer_state_is_refused_on_resume(image_folder, done, tmp_path):
    """Finite weights with an Inf Adam moment would diverge at the first step, and the divergence message would
    send the user back to the same checkpoint: the resume refuses it, naming --no-resume-opt."""
    run = _copy_run(done, tmp_path)
    ckpt = torch.load(run / 'last.pth.tar', weights_only=False)
    state = next(iter(ckpt['optimizer']['state'].values()))
    state['exp_avg_sq'].view(-1)[0] = float('inf')
    torch.save(ckpt, run / 'last.pth.tar')
    before = _files(run)
    with pytest.raises(NonFiniteError) as e:
        train_main(TINY + ['--data-dir', image_folder, '--epochs', '3', '--resume', str(run / 'last.pth.tar')])
    assert f'--resume {run / "last.pth.tar"} [optimizer state] holds non-finite values' in str(e.value)
    assert 'exp_avg_sq' in str(e.value) and '--no-resume-opt' in str(e.value)
    assert _files(run) == before


def test_pretrained_local_dir_weights_with_inf_are_refused(image_folder, done, tmp_path):
    export_main([str(done / 'last.pth.tar'), '--out', str(tmp_path / 'hub')])
    weights = safetensors.torch.load_file(str(tmp_path / 'hub' / 'model.safetensors'))
    weights['blocks.1.mlp.fc1.weight'][0, 0] = float('inf')
    safetensors.torch.save_file(weights, str(tmp_path / 'hub' / 'model.safetensors'))
    argv = _argv(image_folder, tmp_path, 'ft', '--epochs', '1', '--pretrained')
    argv[argv.index('vmoe_deit_tiny')] = f'local-dir:{tmp_path / "hub"}'
    with pytest.raises(NonFiniteError, match=f'--pretrained local-dir:{tmp_path / "hub"} holds non-finite values .*'
                                             r'\(blocks.1.mlp.fc1.weight\)'):
        train_main(argv)
    assert not run_outputs(tmp_path / 'ft')


def test_trust_checkpoint_is_a_trainer_flag(image_folder, done, tmp_path):
    path = _pickled_path_checkpoint(done, tmp_path)
    result = train_main(_argv(image_folder, tmp_path, 'trusted', '--epochs', '1', '--initial-checkpoint', str(path),
                              '--trust-checkpoint'))
    assert result['rows'][0]['epoch'] == 0


def test_truncated_teacher_checkpoint_names_the_file(image_folder, done, tmp_path):
    path = _truncated_copy(done, tmp_path)
    with pytest.raises(RuntimeError, match=f'could not read teacher checkpoint {path}'):
        train_main(_argv(image_folder, tmp_path, 'tc', '--epochs', '1', *TEACHER, '--teacher-checkpoint', str(path)))


def test_a_plain_state_dict_teacher_needs_its_normalization(image_folder, tmp_path):
    """A teacher given as bare weights records no mean/std: ImageNet's (timm's default) would re-normalize the
    input for it silently (3 values for 1-channel images: a raw conv error). It is required, then used."""
    import timm
    kw = dict(embed_dim=32, num_heads=2, patch_size=4, img_size=16, in_chans=1, num_classes=3)
    path = tmp_path / 'teacher.pth'
    torch.save(timm.create_model('deit3_small_patch16_224', **kw).state_dict(), path)
    teacher = [a for a in TEACHER if a != '--no-teacher-pretrained'] + ['--teacher-checkpoint', str(path)]
    with pytest.raises(ValueError) as e:
        train_main(_argv(image_folder, tmp_path, 'bare', '--epochs', '1', *teacher))
    assert f'teacher checkpoint {path} holds weights only (a bare state_dict, no run args) and records no input ' \
           'normalization' in str(e.value) and 'pass --teacher-kwargs mean=M std=S' in str(e.value)
    at = teacher.index('num_classes=3') + 1
    teacher[at:at] = ['mean=0.5', 'std=0.25']  # --teacher-kwargs ... mean=0.5 std=0.25
    result = train_main(_argv(image_folder, tmp_path, 'bare2', '--epochs', '1', *teacher))
    assert result['rows'][0]['epoch'] == 0


def test_teacher_token_grid_mismatch_names_the_flag(image_folder, tmp_path):
    """A teacher whose kwargs give it another patch grid than the student's: the error names --teacher-kwargs."""
    teacher = [a if a != 'img_size=16' else 'img_size=32' for a in TEACHER]
    with pytest.raises(ValueError, match=r'token-grid mismatch: the student has a 4x4 patch grid, the teacher 8x8\. '
                                         r'.*pass --teacher-kwargs img_size=16'):
        train_main(_argv(image_folder, tmp_path, 'grid', '--epochs', '1', *teacher))
    assert not (tmp_path / 'grid').exists()


def test_unknown_tgr_model_kwarg_is_refused(image_folder, tmp_path):
    """tgr_* model kwargs are timm's train.py's TGR options: a typo fails before anything trains."""
    with pytest.raises(TypeError, match="unknown TGR option 'tgr_distil_weight'"):
        train_main(_argv(image_folder, tmp_path, 'typo', '--epochs', '1', '--model-kwargs', 'embed_dim=32',
                         'num_heads=2', 'patch_size=4', 'num_experts=4', 'tgr_distil_weight=5.0'))


def test_default_teacher_offline_names_the_flag(image_folder, tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path / 'empty_cache')
    argv = [a for a in TINY if a not in ('--teacher', 'none')]
    argv[argv.index('vmoe_deit_tiny')] = 'tgr_moe_deit_tiny'
    with pytest.raises(RuntimeError) as e:
        train_main(argv + ['--data-dir', image_folder, '--output', str(tmp_path), '--experiment', 'dt',
                           '--epochs', '1'])
    msg = str(e.value)
    assert "could not load teacher 'deit3_small_patch16_224.fb_in22k_ft_in1k' weights" in msg
    assert '--teacher-checkpoint FILE' in msg and 'teacher_pretrained_path' not in msg


def test_upcycle_from_an_uncached_hub_name_offline(image_folder, tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path / 'empty_cache')
    with pytest.raises(RuntimeError, match="could not get the dense weights of 'deit_tiny_patch16_224.fb_in1k' "
                                           r'\(.*\): they are neither in the local Hugging Face cache'):
        train_main(_argv(image_folder, tmp_path, 'up', '--epochs', '1',
                         '--upcycle-from', 'deit_tiny_patch16_224.fb_in1k'))


# --------------------------------------------------------------------------------------------------
# python -m timm_tgr.export
# --------------------------------------------------------------------------------------------------
def test_export_a_run_folder_takes_its_best_checkpoint(done, tmp_path):
    export_main([str(done), '--out', str(tmp_path / 'e')])
    best = torch.load(done / 'model_best.pth.tar', weights_only=False)['state_dict']
    exported = safetensors.torch.load_file(str(tmp_path / 'e' / 'model.safetensors'))
    assert set(exported) == set(best) and all(torch.equal(exported[k], best[k]) for k in best)
    assert 'Exported from: model_best.pth.tar' in (tmp_path / 'e' / 'README.md').read_text()


def test_export_files_have_the_mode_of_any_user_file(done, tmp_path):
    old = os.umask(0o022)
    try:
        export_main([str(done / 'last.pth.tar'), '--out', str(tmp_path / 'e')])
        (tmp_path / 'plain').write_text('x')  # any file the user writes
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / 'plain').stat().st_mode)
    assert want == 0o644
    for f in (tmp_path / 'e').iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == want, f.name


def _export_into_existing(done, tmp_path):
    export_main([str(done / 'last.pth.tar'), '--out', str(tmp_path / 'e')])
    return [str(done / 'checkpoint-0.pth.tar'), '--out', str(tmp_path / 'e')]


def _empty_run_folder(done, tmp_path):
    (tmp_path / 'nothing').mkdir()
    return [str(tmp_path / 'nothing'), '--out', str(tmp_path / 'e')]


def _run_folder_without_best(done, tmp_path):
    run = _copy_run(done, tmp_path)
    os.remove(run / 'model_best.pth.tar')
    return [str(run), '--out', str(tmp_path / 'e')]


def _non_finite_export(done, tmp_path):
    return [str(_nan_checkpoint(done, tmp_path)), '--out', str(tmp_path / 'e')]


def _finite_weights_non_finite_logits(done, tmp_path):
    ckpt = torch.load(done / 'last.pth.tar', weights_only=False)
    ckpt['state_dict']['head.weight'].fill_(3e38)
    path = tmp_path / 'huge.pth.tar'
    torch.save(ckpt, path)
    return [str(path), '--out', str(tmp_path / 'e')]


def _truncated_export(done, tmp_path):
    return [str(_truncated_copy(done, tmp_path)), '--out', str(tmp_path / 'e')]


def _ema_without_ema(done, tmp_path):
    return [str(done / 'last.pth.tar'), '--out', str(tmp_path / 'e'), '--ema']


@pytest.mark.parametrize('make, error, message', [
    (_export_into_existing, FileExistsError, 'already holds an export (model.safetensors, config.json, README.md): '
                                             'give another --out folder, or pass --overwrite'),
    (_empty_run_folder, FileNotFoundError, 'is a folder without model_best.pth.tar'),
    (_run_folder_without_best, FileNotFoundError, 'give one of its checkpoints: checkpoint-0.pth.tar'),
    (_non_finite_export, NonFiniteError, 'holds non-finite values (NaN or Inf) in 1 of'),
    (_finite_weights_non_finite_logits, NonFiniteError, 'its weights are finite, but a forward on a probe batch '
                                                         'gives NaN / Inf logits'),
    (_truncated_export, RuntimeError, 'is truncated, corrupt or not a checkpoint'),
    (_ema_without_ema, ValueError, "has no EMA weights ('state_dict_ema')"),
])
def test_bad_export_inputs(done, tmp_path, make, error, message):
    argv = make(done, tmp_path)
    out = tmp_path / 'e'
    before = _files(out) if out.exists() else None
    with pytest.raises(error) as e:
        export_main(argv)
    assert message in str(e.value)
    assert (_files(out) if out.exists() else None) == before  # an earlier export stays as it was
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.e.tmp-')]


def test_the_model_card_escapes_what_the_checkpoint_says(done, tmp_path):
    """Run args are the checkpoint's (anyone's) strings: newlines and HTML in them must not reach the card's YAML
    header (which --push uploads) or its markdown as markup."""
    import yaml
    ckpt = torch.load(done / 'last.pth.tar', weights_only=False)
    ckpt['args'].dataset = 'evil\nlicense: mit\n<script>alert(1)</script>'
    ckpt['args'].aa = '<img src=x onerror=alert(1)>\n---\ntags: [x]'
    torch.save(ckpt, tmp_path / 'x.pth.tar')
    export_main([str(tmp_path / 'x.pth.tar'), '--out', str(tmp_path / 'e')])
    card = (tmp_path / 'e' / 'README.md').read_text()
    header = yaml.safe_load(card.split('---\n')[1])
    assert set(header) == {'tags', 'pipeline_tag', 'library_name', 'license'} and header['license'] == 'apache-2.0'
    assert '<script>' not in card and '<img' not in card and card.count('\n---\n') == 1
    assert 'evil license: mit &lt;script&gt;alert(1)&lt;/script&gt; (not a dataset id' in card


def test_export_overwrite_replaces_the_export(done, tmp_path):
    argv = _export_into_existing(done, tmp_path)
    export_main(argv + ['--overwrite'])
    exported = safetensors.torch.load_file(str(tmp_path / 'e' / 'model.safetensors'))
    first = torch.load(done / 'checkpoint-0.pth.tar', weights_only=False)['state_dict']
    assert all(torch.equal(exported[k], first[k]) for k in first)


def test_export_disk_full_leaves_the_earlier_export(done, tmp_path, monkeypatch):
    import timm_tgr.export as export
    _export_into_existing(done, tmp_path)
    before = _files(tmp_path / 'e')

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(export, 'save_for_hf', full)
    with pytest.raises(CheckpointWriteError, match=r'the disk is full: .*e/model.safetensors'):
        export_main([str(done / 'checkpoint-0.pth.tar'), '--out', str(tmp_path / 'e'), '--overwrite'])
    assert _files(tmp_path / 'e') == before


# --------------------------------------------------------------------------------------------------
# corrupt data: checked before the first step, naming the file and the fix
# --------------------------------------------------------------------------------------------------
FMNIST = [a for a in TINY if a not in ('--dataset', '', '--img-size', '16', '--num-classes', '3', '--mean', '0.5',
                                       '--std', '0.25')]
FMNIST[FMNIST.index('patch_size=4')] = 'patch_size=7'


def _raw(root):
    return root / 'FashionMNIST' / 'raw'


def _fmnist(tmp_path):
    from timm_tgr.data import write_synthetic_fashion_mnist
    root = tmp_path / 'data'
    write_synthetic_fashion_mnist(str(root), n_train=16, n_test=8)
    return root


def _truncate_images(root):
    _truncate(_raw(root) / 'train-images-idx3-ubyte')
    return [], 'train-images-idx3-ubyte is truncated'


def _bad_magic(root):
    path = _raw(root) / 't10k-labels-idx1-ubyte'
    path.write_bytes(b'\x12\x34' + path.read_bytes()[2:])
    return [], 't10k-labels-idx1-ubyte is not an IDX file'


def _fewer_labels(root):
    from timm_tgr.data import read_idx
    path = _raw(root) / 'train-labels-idx1-ubyte'
    write_idx(str(path), read_idx(str(path))[:12])
    return [], 'train-labels-idx1-ubyte holds 12 labels for the 16 images'


def _trailing_bytes(root):
    path = _raw(root) / 'train-images-idx3-ubyte'
    path.write_bytes(path.read_bytes() + b'\0' * 5)
    return [], 'train-images-idx3-ubyte has 5 bytes after the 12560 its header announces'


def _more_classes_than_the_model(root):
    return ['--num-classes', '5'], ("the train split of --dataset 'torch/fashion_mnist' in {data} has labels 0..9, "
                                    'but the model is built for 5 classes (labels 0..4): pass --num-classes 10')


@pytest.mark.parametrize('damage', [_truncate_images, _bad_magic, _fewer_labels, _trailing_bytes,
                                    _more_classes_than_the_model])
def test_corrupt_fashion_mnist_files_stop_before_the_first_step(tmp_path, damage):
    root = _fmnist(tmp_path)
    extra, message = damage(root)
    before = _files(root)
    with pytest.raises(ValueError) as e:
        train_main(FMNIST + ['--dataset', 'torch/fashion_mnist', '--data-dir', str(root), '--output', str(tmp_path),
                             '--experiment', 'x', '--epochs', '1', *extra])
    assert message.format(data=root) in str(e.value)
    assert _files(root) == before and not (tmp_path / 'x').exists()


def test_corrupt_gz_source_is_named_and_never_copied(tmp_path, monkeypatch):
    from timm_tgr.data import FASHION_MNIST_FILES
    src = tmp_path / 'src'
    src.mkdir()
    for f in _raw(_fmnist(tmp_path)).iterdir():
        with gzip.open(src / (f.name + '.gz'), 'wb') as g:
            g.write(f.read_bytes())
    bad = src / 'train-labels-idx1-ubyte.gz'
    bad.write_bytes(bad.read_bytes()[:20])  # cut short
    monkeypatch.setenv('TIMM_TGR_FASHION_MNIST', str(src))
    data = tmp_path / 'prepared'
    with pytest.raises(ValueError) as e:
        train_main(FMNIST + ['--dataset', 'torch/fashion_mnist', '--data-dir', str(data), '--output', str(tmp_path),
                             '--experiment', 'x', '--epochs', '1'])
    assert f'{bad} is not a readable gzip file' in str(e.value) and 'apt-get install --reinstall' in str(e.value)
    raw = _raw(data)
    assert 'train-labels-idx1-ubyte' not in os.listdir(raw) and not [p for p in os.listdir(raw) if p.endswith('.part')]
    assert set(os.listdir(raw)) < set(FASHION_MNIST_FILES)


def test_missing_folder_dataset_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=f'--data-dir {tmp_path / "nowhere"} does not exist'):
        train_main(TINY + ['--data-dir', str(tmp_path / 'nowhere'), '--output', str(tmp_path), '--experiment', 'x',
                           '--epochs', '1'])
    assert not (tmp_path / 'x').exists()


def test_more_class_folders_than_classes(image_folder, tmp_path):
    data = tmp_path / 'four'
    shutil.copytree(image_folder, data)
    for split in ('train', 'validation'):
        shutil.copytree(data / split / 'c0', data / split / 'c3')
    with pytest.raises(ValueError, match="the train split of --dataset '' in .* has 4 class folders, but the model is "
                                         r'built for 3 classes \(labels 0..2\): pass --num-classes 4'):
        train_main(TINY + ['--data-dir', str(data), '--output', str(tmp_path), '--experiment', 'x', '--epochs', '1'])
    assert not (tmp_path / 'x').exists()


def _no_validation_folder(data):
    shutil.rmtree(data / 'validation')
    return FileNotFoundError, (f'--data-dir {data} has no validation/ folder for --val-split validation (its folders: '
                               'train): timm would read the whole --data-dir as that split, so the validation top-1 '
                               'and model_best would come from the training images')


def _renamed_validation_class(data):
    (data / 'validation' / 'c1').rename(data / 'validation' / 'shirt')
    return ValueError, 'differ (only in train/: c1; only in validation/: shirt; a class folder without images'


def _empty_training_class(data):
    for p in (data / 'train' / 'c1').iterdir():
        p.unlink()
    return ValueError, 'differ (only in validation/: c1; a class folder without images counts as missing)'


def _unreadable_image(data):
    (data / 'train' / 'c1' / '3.png').write_bytes(b'not a png')
    return ValueError, (f"1 image(s) of the train split of --data-dir {data} cannot be read ({data / 'train' / 'c1'}"
                        f"/3.png: UnidentifiedImageError")


@pytest.mark.parametrize('damage', [_no_validation_folder, _renamed_validation_class, _empty_training_class,
                                    _unreadable_image])
def test_image_folders_are_checked_before_the_first_step(image_folder, tmp_path, damage):
    """A missing validation split, class folders that differ between the splits (labels would shift) and an image
    timm would skip unnamed stop the run before anything is written."""
    data = tmp_path / 'data'
    shutil.copytree(image_folder, data)
    error, message = damage(data)
    with pytest.raises(error) as e:
        train_main(TINY + ['--data-dir', str(data), '--output', str(tmp_path), '--experiment', 'x', '--epochs', '1'])
    assert message in str(e.value)
    assert not (tmp_path / 'x').exists() or not run_outputs(tmp_path / 'x')


def test_an_image_that_fails_to_decode_mid_epoch_is_named(image_folder, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(image_folder, data)
    bad = data / 'train' / 'c2' / '5.png'
    bad.write_bytes(bad.read_bytes()[:60])  # the header reads, the pixels do not
    with pytest.raises(ValueError, match=f'image {bad} cannot be read .*: replace or remove it'):
        train_main(TINY + ['--data-dir', str(data), '--output', str(tmp_path), '--experiment', 'x', '--epochs', '1'])
    assert not run_outputs(tmp_path / 'x')


def test_quickstart_refuses_an_output_holding_an_earlier_quickstart(tmp_path, capsys):
    from timm_tgr.quickstart import main as quickstart
    (tmp_path / 'qs' / 'teacher').mkdir(parents=True)
    (tmp_path / 'qs' / 'teacher' / 'metrics.jsonl').write_text('{"epoch": 0}\n')
    before = _files(tmp_path / 'qs')
    with pytest.raises(SystemExit):
        quickstart(['--output', str(tmp_path / 'qs'), '--data-dir', str(tmp_path / 'data')])
    assert f'--output {tmp_path / "qs"} holds an earlier quickstart' in capsys.readouterr().err
    assert _files(tmp_path / 'qs') == before
