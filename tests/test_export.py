"""Student export for the Hugging Face Hub (timm_tgr.export), pretrained loading, torch.hub (all offline)."""
import argparse
import copy
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import types

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
import yaml
from timm.utils import CheckpointSaver

from reference import architecture_kwargs
from timm_tgr.export import CARD_PICTURE, export_checkpoint, main, student_state_dict

REPO = pathlib.Path(__file__).resolve().parents[1]
ARCH = 'tgr_moe_deit_tiny'
# a tiny TGR-MoE student: 1-channel 32x32 images, 10 classes, MoE in blocks 1 and 3
KW = dict(img_size=32, patch_size=8, in_chans=1, num_classes=10, embed_dim=32, depth=4, num_heads=2,
          num_experts=4, moe_layers=(1, 3))
ARCH_KW = {k: v for k, v in KW.items() if k not in ('num_classes', 'in_chans', 'img_size')}
FILES = {'config.json', 'model.safetensors', 'README.md'}


def _logits(model, in_chans=1):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(3, in_chans, 32, 32, generator=g))


class _StubTGRTask:
    """What a TGRTask hands timm's CheckpointSaver: student state_dicts and the task state (teacher routers)."""

    def __init__(self, student, ema):
        self.student, self.ema = student, ema

    def get_checkpoint_state(self, ema=False, unwrap_fn=None):
        if ema:
            return {'state_dict_ema': self.ema.state_dict()}
        sd = dict(self.student.state_dict())
        sd['teacher.blocks.0.attn.qkv.weight'] = torch.randn(96, 32)  # a stray teacher tensor
        routers = {f'{i}.proj.weight': torch.randn(4, 48) for i in (1, 3)}
        return {'state_dict': sd, 'task_state': {'teacher_routers': routers, 'distill_schedule': {'step': 7}}}


@pytest.fixture
def run(tmp_path):
    """A train_tgr.py-like run folder: checkpoint (timm CheckpointSaver), metrics.jsonl, args.yaml."""
    student = timm.create_model(ARCH, **KW)
    ema = copy.deepcopy(student)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for p in student.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()  # an optimizer state to leave out
    # as timm_tgr/train/ records them: model_kwargs resolved (with the dropout rates), plain values
    model_kwargs = dict(ARCH_KW, moe_layers=[1, 3], num_classes=10, in_chans=1, img_size=32, drop_path_rate=0.1,
                        tgr_mode='tgr', tgr_teacher_checkpoint='/data/private/teacher.pth')
    args = argparse.Namespace(
        model=ARCH, model_kwargs=model_kwargs, num_classes=10, in_chans=1, img_size=32, dataset='torch/fashion_mnist',
        data_dir='/data/private', mean=[0.2860], std=[0.3530], crop_pct=1.0, interpolation='', epochs=2, lr=1e-3,
        batch_size=64, drop_path=0.1, model_ema=True, eval_metric='top1', teacher='deit3_small_patch16_224',
        teacher_checkpoint='/data/private/teacher.pth', tgr_mode='tgr', distill_weight=5.0)
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    saver = CheckpointSaver(student, opt, args=args, checkpoint_dir=str(run_dir), recovery_dir=str(run_dir),
                            task=_StubTGRTask(student, ema))
    saver.save_checkpoint(epoch=0, metric=61.5)
    saver.save_checkpoint(epoch=1, metric=60.0)  # model_best stays at epoch 0
    with open(run_dir / 'metrics.jsonl', 'w') as f:
        for epoch, top1 in ((0, 61.5), (1, 60.0)):
            routing = {'1': {'entropy': 0.61 + epoch, 'load': [0.25] * 4, 'dropped_fraction': 0.02,
                             'consistency_prev': 0.9 if epoch else None},
                       '3': {'entropy': 0.73 + epoch, 'load': [0.25] * 4, 'dropped_fraction': 0.0,
                             'consistency_prev': 0.95 if epoch else None}}
            f.write(json.dumps({'epoch': epoch, 'eval_top1': top1, 'eval_loss': 1.25, 'train_loss': 1.5,
                                'routing': routing}) + '\n')
    with open(run_dir / 'args.yaml', 'w') as f:
        yaml.safe_dump(vars(args), f)
    return types.SimpleNamespace(dir=run_dir, best=run_dir / 'model_best.pth.tar', last=run_dir / 'last.pth.tar',
                                 student=student, ema=ema, tmp=tmp_path)


def _hub_cache(tmp_path, monkeypatch, repo_id, folder):
    """Lay out `folder` in an HF cache exactly as huggingface_hub does and switch the hub offline onto it."""
    cache = tmp_path / 'hf_cache'
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / 'snapshots' / commit
    (repo / 'blobs').mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    for f in sorted(pathlib.Path(folder).iterdir()):
        data = f.read_bytes()
        if f.suffix == '.safetensors':  # LFS file: blob named by its sha256
            blob = hashlib.sha256(data).hexdigest()
        else:  # regular git file: blob named by its git sha1
            blob = hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()
        (repo / 'blobs' / blob).write_bytes(data)
        os.symlink(os.path.join('..', '..', 'blobs', blob), snap / f.name)
    _offline(monkeypatch, cache)
    return cache


def _offline(monkeypatch, cache):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    # huggingface_hub reads both at import
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))


def test_export_local_dir_round_trip(run):
    out = run.tmp / 'export'
    main([str(run.best), '--out', str(out), '--no-ema'])
    assert {f.name for f in out.iterdir()} == FILES
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['architecture'] == ARCH and cfg['num_classes'] == 10
    expected = dict(ARCH_KW, moe_layers=[1, 3], num_classes=10, in_chans=1, img_size=32)
    assert architecture_kwargs(cfg['model_args'], expected) == architecture_kwargs(expected, expected)
    assert cfg['pretrained_cfg']['input_size'] == [1, 32, 32]  # the trained data config
    assert cfg['pretrained_cfg']['mean'] == [0.286] and cfg['pretrained_cfg']['crop_pct'] == 1.0
    assert cfg['pretrained_cfg']['interpolation'] == 'bicubic'
    assert tuple(timm.data.resolve_data_config({}, model=model)['input_size']) == (1, 32, 32)
    assert type(model) is type(run.student) and sorted(model.get_moe_layers()) == [1, 3]
    assert torch.equal(_logits(model), _logits(run.student))


@pytest.mark.parametrize('ema', [True, None])
def test_export_ema(run, ema):
    """--ema, and the default for a checkpoint with EMA weights: the EMA (what model_best was picked by)."""
    out = run.tmp / 'ema'
    export_checkpoint(run.last, out=out, ema=ema)
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(_logits(model), _logits(run.ema))
    assert 'state_dict_ema (EMA)' in (out / 'README.md').read_text()


@pytest.mark.parametrize('arch', ['vmoe_deit_tiny_distilled', 'soft_moe_deit_tiny', 'ec_moe_deit_tiny'])
def test_round_trip_other_architectures(tmp_path, arch):
    kw = {k: v for k, v in KW.items() if k != 'num_experts'}
    student = timm.create_model(arch, **kw)
    sd_file = tmp_path / 'weights.safetensors'
    safetensors.torch.save_file(student.state_dict(), str(sd_file))
    export_checkpoint(sd_file, out=tmp_path / 'out', model=arch, model_kwargs=kw)
    model = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    assert type(model) is type(student)
    assert torch.equal(_logits(model), _logits(student))


def test_no_teacher_tensors_exported(run):
    ckpt = torch.load(run.best, weights_only=False)
    assert 'teacher.blocks.0.attn.qkv.weight' in ckpt['state_dict'] and ckpt['task_state']['teacher_routers']
    out = run.tmp / 'export'
    export_checkpoint(run.best, out=out)
    keys = set(safetensors.torch.load_file(str(out / 'model.safetensors')))
    assert keys == set(run.student.state_dict())
    assert not [k for k in keys if 'teacher' in k or 'router' in k and not k.endswith('mlp.router.proj.weight')]
    assert 'teacher' not in (out / 'config.json').read_text()


def test_student_state_dict_strips_wrappers():
    student = timm.create_model(ARCH, **KW).state_dict()
    wrapped = {f'module.student.{k}': v for k, v in student.items()}  # DDP(TGRTrainableModule)
    wrapped.update({'module.teacher_routers.1.proj.weight': torch.zeros(4, 48),
                    'module.teacher_routers.3.proj.weight': torch.zeros(4, 48)})
    sd, dropped = student_state_dict(wrapped)
    assert set(sd) == set(student) and sorted(dropped) == ['teacher_routers.1.proj.weight',
                                                           'teacher_routers.3.proj.weight']
    task = {f'trainable_module.student.{k}': v for k, v in student.items()}  # a whole TGRTask state_dict
    task.update({'teacher.model.cls_token': torch.zeros(1, 1, 48), 'trainable_module.teacher_routers.1.proj.weight':
                 torch.zeros(4, 48)})
    sd, dropped = student_state_dict(task)
    assert set(sd) == set(student) and len(dropped) == 2
    sd, dropped = student_state_dict(dict(student, **{'teacher.pos_embed': torch.zeros(1)}))
    assert set(sd) == set(student) and dropped == ['teacher.pos_embed']


def test_model_card(run):
    out = run.tmp / 'export'
    export_checkpoint(run.best, out=out)
    card = (out / 'README.md').read_text()
    # model_best.pth.tar is epoch 0: the card reports that epoch's row, not the last one
    assert 'Results (metrics.jsonl, epoch 0)' in card and 'eval_top1: 61.5' in card and '60.0' not in card
    assert 'block 1: entropy 0.61, dropped_fraction 0.02, consistency_prev n/a' in card
    assert 'block 3: entropy 0.73' in card and 'load' not in card
    assert 'arXiv:2604.21330' in card and '@inproceedings{tgrmoe2026' in card
    assert '- fashion_mnist' in card and 'epochs: 2' in card and 'distill_weight: 5' in card
    assert 'model_kwargs.tgr_mode: tgr' in card and 'teacher: deit3_small_patch16_224' in card
    assert '/data/private' not in card  # local paths stay out of the card
    (run.dir / 'metrics.jsonl').unlink()
    export_checkpoint(run.best, out=out, overwrite=True)
    card = (out / 'README.md').read_text()
    assert 'Results:** not recorded: no metrics.jsonl next to the checkpoint' in card
    assert 'eval_top1' not in card and 'entropy' not in card
    metrics = run.tmp / 'm.jsonl'
    metrics.write_text(json.dumps({'epoch': 5, 'eval_top1': 12.5}) + '\n{"epoch": 6, "eval_t')  # truncated row
    export_checkpoint(run.best, out=out, metrics=metrics, overwrite=True)
    card = (out / 'README.md').read_text()
    assert 'epoch 5, its last row (the checkpoint is from epoch 0)' in card and 'eval_top1: 12.5' in card
    assert 'Routing per MoE block:** not recorded' in card


def test_model_card_shows_consistency_with_the_starting_weights(run):
    """A fine-tuning run's row (consistency_pretrained) gets a 'Fine-tuning' section; other rows do not."""
    out = run.tmp / 'export'
    export_checkpoint(run.best, out=out)
    assert 'Fine-tuning' not in (out / 'README.md').read_text()
    metrics = run.tmp / 'm.jsonl'
    routing = {'1': {'entropy': 0.6, 'consistency_prev': 0.9, 'consistency_pretrained': 0.5},
               '3': {'entropy': 0.7, 'consistency_prev': 0.8, 'consistency_pretrained': 0.625}}
    metrics.write_text(json.dumps({'epoch': 0, 'eval_top1': 61.5, 'consistency_pretrained': 0.5625,
                                   'routing': routing}) + '\n')
    export_checkpoint(run.best, out=out, metrics=metrics, overwrite=True)
    card = (out / 'README.md').read_text()
    assert 'consistency_pretrained: 56.25 % of probe tokens keep the top-1 expert' in card
    assert 'Teacher routers: fresh' in card  # the run had a teacher and no --teacher-routers-from
    assert 'block 3: entropy 0.7, consistency_prev 0.8, consistency_pretrained 0.625' in card


def test_model_card_refuses_a_corrupt_metrics_row(run):
    """Only a torn last line is skipped (an interrupted write); a bad row before it names its line."""
    metrics = run.tmp / 'm.jsonl'
    metrics.write_text('{"epoch": 0, "eval_top1": 61.5}\nnot json\n{"epoch": 1, "eval_top1": 60.0}\n')
    with pytest.raises(ValueError, match='m.jsonl:2 is not a JSON metrics row'):
        export_checkpoint(run.best, out=run.tmp / 'export', metrics=metrics)


def test_hf_hub_and_pretrained_from_offline_cache(run, monkeypatch):
    out = run.tmp / 'export'
    export_checkpoint(run.best, out=out, ema=False)
    _hub_cache(run.tmp, monkeypatch, 'some-user/tiny-tgr', out)
    model = timm.create_model('hf-hub:some-user/tiny-tgr', pretrained=True)
    assert torch.equal(_logits(model), _logits(run.student))


@pytest.mark.parametrize('arch', ['soft_moe_deit_tiny', 'ec_moe_deit_small'])
def test_pretrained_without_weights_fails_at_once(tmp_path, monkeypatch, arch):
    """The routing baselines have no weights: pretrained=True says how to make them, without asking the Hub."""
    import timm.models._builder as builder

    def no_download(*args, **kwargs):
        raise AssertionError('pretrained=True without weights must not try to download anything')

    monkeypatch.setattr(builder, 'load_pretrained', no_download)
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', no_download)
    with pytest.raises(RuntimeError, match=f'No weights are published for {arch}') as e:
        timm.create_model(arch, pretrained=True, img_size=32, **ARCH_KW)
    msg = str(e.value)
    assert 'python -m timm_tgr.export' in msg and '--push' in msg
    assert "pretrained_cfg_overlay=dict(file=" in msg and 'local-dir:' in msg
    assert not timm.is_model_pretrained(arch)
    # the upcycled tags are the only weights listed, one per V-MoE / TGR-MoE architecture (the default tag)
    listed = timm.list_models(pretrained=True, filter='*moe_deit*')
    assert len(listed) == 12 and all(n.endswith('.fb_in1k_upcycled') for n in listed)


def test_trainer_fine_tunes_from_the_hub_with_a_fresh_head(run, monkeypatch):
    """train_tgr.py --model hf-hub:ORG/NAME --pretrained --num-classes 4: every tensor but the head is the
    exported student's; the run records the architecture and its config.json kwargs."""
    from timm_tgr.train import parse_args
    from timm_tgr.train.setup import create_model
    from timm_tgr.train.spec import resolve_run
    out = run.tmp / 'export'
    export_checkpoint(run.last, out=out, ema=False)
    _hub_cache(run.tmp, monkeypatch, 'some-user/tiny-tgr', out)
    spec = resolve_run(parse_args(['--dataset', '', '--model', 'hf-hub:some-user/tiny-tgr', '--pretrained',
                                   '--num-classes', '4']))
    model = create_model(spec.model, torch.device('cpu'))
    source, tuned = run.student.state_dict(), model.state_dict()
    assert set(source) == set(tuned)
    for k, v in source.items():
        assert torch.equal(tuned[k], v) != k.startswith('head.'), k
    assert tuned['head.weight'].shape == (4, 32)
    expected = dict(ARCH_KW, moe_layers=[1, 3], num_classes=4, in_chans=1, img_size=32)
    assert spec.model.model_arch == ARCH
    assert architecture_kwargs(spec.model.model_kwargs_resolved, expected) == architecture_kwargs(expected, expected)


def test_pretrained_cfg_overlay_file(run):
    out = run.tmp / 'export'
    export_checkpoint(run.best, out=out, ema=False)
    model = timm.create_model(ARCH, pretrained=True, **KW,
                              pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'), num_classes=10))
    assert torch.equal(_logits(model), _logits(run.student))


def test_torch_hub_local(run):
    out = run.tmp / 'export'
    export_checkpoint(run.best, out=out, ema=False)
    model = torch.hub.load(str(REPO), ARCH, source='local', pretrained=True, **KW,
                           pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'), num_classes=10))
    assert torch.equal(_logits(model), _logits(run.student))
    spec = importlib.util.spec_from_file_location('timm_tgr_hubconf', REPO / 'hubconf.py')
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    entries = {n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith('_')}
    ours = {n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('timm_tgr.')}
    assert entries == ours and {'tgr_moe_deit_small', 'soft_moe_deit_base', 'ec_moe_deit_tiny'} <= entries
    m = torch.hub.load(str(REPO), 'vmoe_deit_small_distilled', source='local', img_size=32, num_classes=3, **ARCH_KW)
    assert m.num_classes == 3 and m.pretrained_cfg['architecture'] == 'vmoe_deit_small_distilled'


def test_push_builds_exact_upload(run, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        calls['create_repo'] = dict(repo_id=repo_id, private=private, exist_ok=exist_ok)
        return types.SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        calls['upload'] = dict(repo_id=repo_id, kwargs=kwargs,
                               files={f.name: f.read_bytes() for f in pathlib.Path(folder_path).iterdir()})
        return 'https://huggingface.co/some-user/tiny-tgr/commit/0'

    monkeypatch.setattr(huggingface_hub.HfApi, 'create_repo', create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, 'file_exists', lambda self, *a, **k: False)
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', upload_folder)
    out = run.tmp / 'export'
    main([str(run.best), '--out', str(out), '--push', 'some-user/tiny-tgr', '--private'])
    assert calls['create_repo'] == dict(repo_id='some-user/tiny-tgr', private=True, exist_ok=True)
    files = calls['upload']['files']
    assert set(files) == FILES  # safetensors only: no pickled pytorch_model.bin
    for name in FILES:
        assert files[name] == (out / name).read_bytes(), name
    assert "timm.create_model('hf-hub:some-user/tiny-tgr', pretrained=True)" in files['README.md'].decode()
    assert 'timm_tgr.export' in calls['upload']['kwargs']['commit_message']


def test_card_embeds_the_routing_picture(run, monkeypatch):
    """The run's --visualize-every heatmap (the checkpoint's epoch, else the latest drawn) or --routing-picture
    is copied next to the card, which embeds it; a push uploads it beside the weights."""
    out = run.tmp / 'export'
    export_checkpoint(run.best, out=out)
    card = (out / 'README.md').read_text()
    assert not (out / CARD_PICTURE).exists() and CARD_PICTURE not in card
    assert 'pip install timm-tgr' in card  # the card says where the architecture comes from
    for epoch, data in ((1, b'epoch 1'), (0, b'epoch 0')):
        (run.dir / 'visualize' / f'epoch-{epoch:03d}').mkdir(parents=True)
        (run.dir / 'visualize' / f'epoch-{epoch:03d}' / 'class_expert.png').write_bytes(data)
    export_checkpoint(run.best, out=out, overwrite=True)  # model_best is epoch 0
    assert (out / CARD_PICTURE).read_bytes() == b'epoch 0'
    card = (out / 'README.md').read_text()
    assert f'![share of each class\'s patch tokens per expert]({CARD_PICTURE})' in card and 'at epoch 0 (' in card
    export_checkpoint(run.last, out=out, overwrite=True)  # epoch 1
    assert (out / CARD_PICTURE).read_bytes() == b'epoch 1'
    (run.dir / 'visualize' / 'epoch-001' / 'class_expert.png').unlink()
    export_checkpoint(run.last, out=out, overwrite=True)
    assert (out / CARD_PICTURE).read_bytes() == b'epoch 0'
    assert 'at epoch 0, the latest drawn; the checkpoint is from epoch 1' in (out / 'README.md').read_text()
    own = run.tmp / 'own.png'
    own.write_bytes(b'visualize')
    main([str(run.best), '--out', str(out), '--routing-picture', str(own), '--overwrite'])
    assert (out / CARD_PICTURE).read_bytes() == b'visualize' and 'python -m timm_tgr.visualize' in (
        out / 'README.md').read_text()

    uploads = []
    monkeypatch.setattr(huggingface_hub.HfApi, 'create_repo',
                        lambda self, repo_id, **k: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, 'file_exists', lambda self, *a, **k: False)
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', lambda self, **k: 'https://huggingface.co/x/y/commit/0')
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_file', lambda self, **k: uploads.append(k))
    export_checkpoint(run.best, push='some-user/tiny-tgr')
    assert [(u['path_in_repo'], u['repo_id'], open(u['path_or_fileobj'], 'rb').read()) for u in uploads] == [
        (CARD_PICTURE, 'some-user/tiny-tgr', b'epoch 0')]
    shutil.rmtree(run.dir / 'visualize')
    export_checkpoint(run.best, out=out, overwrite=True)  # no picture now: none left over from before
    assert not (out / CARD_PICTURE).exists() and CARD_PICTURE not in (out / 'README.md').read_text()


def test_bare_state_dict_needs_model(run):
    sd_file = run.tmp / 'sd.pth'
    torch.save(run.student.state_dict(), sd_file)
    with pytest.raises(ValueError, match='pass --model NAME'):
        export_checkpoint(sd_file, out=run.tmp / 'x')
    out = run.tmp / 'bare'
    kwargs = ['--model-kwargs'] + [f'{k}={v}' for k, v in KW.items()]
    main([str(sd_file), '--model', ARCH, '--out', str(out)] + [a.replace(' ', '') for a in kwargs])
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(_logits(model), _logits(run.student))
    assert 'Training recipe:** not recorded' in (out / 'README.md').read_text()
    # next to its run's args.yaml, a bare state_dict needs no --model
    shutil.copy(sd_file, run.dir / 'sd.pth')
    model = export_checkpoint(run.dir / 'sd.pth', out=run.tmp / 'bare2')
    assert torch.equal(_logits(model), _logits(run.student))
    assert 'teacher: deit3_small_patch16_224' in (run.tmp / 'bare2' / 'README.md').read_text()


def test_architecture_mismatch(run):
    with pytest.raises(RuntimeError, match="saved for architecture 'tgr_moe_deit_tiny': export it with --model "
                                           "tgr_moe_deit_tiny"):
        export_checkpoint(run.best, out=run.tmp / 'x', model='soft_moe_deit_tiny')
    with pytest.raises(RuntimeError, match=r'num_classes=10'):  # hints from the weights' shapes
        export_checkpoint(run.best, out=run.tmp / 'x', model_kwargs=dict(num_classes=5))
    out = run.tmp / 'export'
    export_checkpoint(run.best, out=out)
    with pytest.raises(RuntimeError, match=r"do not fit tgr_moe_deit_tiny .*local-dir:DIR"):
        timm.create_model(ARCH, pretrained=True, **dict(KW, num_experts=8),
                          pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'), num_classes=10))


def test_corrupt_and_missing_files(run, monkeypatch):
    out = run.tmp / 'export'
    export_checkpoint(run.best, out=out)
    weights = out / 'model.safetensors'
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    with pytest.raises(RuntimeError, match='corrupt or truncated'):
        timm.create_model(f'local-dir:{out}', pretrained=True)
    weights.write_bytes(b'\xff' * 64)
    with pytest.raises(RuntimeError, match='corrupt or truncated'):
        timm.create_model(f'local-dir:{out}', pretrained=True)
    with pytest.raises(RuntimeError, match='corrupt or truncated'):
        export_checkpoint(weights, out=run.tmp / 'x', model=ARCH, model_kwargs=KW)
    # the same truncated file in the Hub cache
    _hub_cache(run.tmp, monkeypatch, 'some-user/broken', out)
    with pytest.raises(RuntimeError, match='Hugging Face Hub repo some-user/broken .*corrupt or truncated'):
        timm.create_model('hf-hub:some-user/broken', pretrained=True)
    (out / 'config.json').unlink()
    with pytest.raises(FileNotFoundError, match='config.json'):
        timm.create_model(f'local-dir:{out}', pretrained=True)
    truncated = run.tmp / 'truncated.pth.tar'
    truncated.write_bytes(run.best.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match='truncated, corrupt or not a checkpoint'):
        export_checkpoint(truncated, out=run.tmp / 'x')
    ckpt = torch.load(run.best, weights_only=False)
    del ckpt['state_dict_ema']
    torch.save(ckpt, run.dir / 'no_ema.pth.tar')
    with pytest.raises(ValueError, match='no EMA weights'):
        export_checkpoint(run.dir / 'no_ema.pth.tar', out=run.tmp / 'x', ema=True)


def test_untrusted_checkpoint_objects(run):
    ckpt = torch.load(run.best, weights_only=False)
    ckpt['args'].output = pathlib.Path('/runs/out')  # not allowed by torch.load(weights_only=True)
    path = run.dir / 'with_path.pth.tar'
    torch.save(ckpt, path)
    with pytest.raises(RuntimeError, match='--trust-checkpoint'):
        export_checkpoint(path, out=run.tmp / 'x')
    model = export_checkpoint(path, out=run.tmp / 'x', trust_checkpoint=True, ema=False)
    assert torch.equal(_logits(model), _logits(run.student))
