"""Fine-tuning with train_tgr.py on tiny synthetic data: head reset, transfer consistency, carried-over teacher
routers, and clear errors for checkpoints of another model.

A 1-epoch TGR run on 3 classes is the "pre-trained" model; fine-tuning runs train on 2 other classes from
its checkpoint (``--initial-checkpoint``) or from its export (``--model local-dir:DIR --pretrained``).
"""
import argparse
import glob
import os

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

import timm_tgr  # noqa: F401
from reference import architecture_kwargs
from synthetic import write_image_folder
from timm_tgr.export import export_checkpoint
from timm_tgr.train import main as train_main, parse_args, read_metrics
from timm_tgr.train.setup import create_model, setup_training
from timm_tgr.train.spec import resolve_run

MODEL_KW = ['embed_dim=32', 'num_heads=2', 'patch_size=7', 'num_experts=4']
COMMON = [
    '--dataset', '', '--img-size', '14', '--in-chans', '1', '--mean', '0.5', '--std', '0.25', '--crop-pct', '1.0',
    '-b', '8', '-j', '0', '--warmup-epochs', '0', '--probe-samples', '8', '--no-progress', '--no-plot',
    '--threads', '1', '--checkpoint-hist', '10',
]
TEACHER = ['--teacher', 'deit3_small_patch16_224', '--no-teacher-pretrained', '--teacher-kwargs', 'embed_dim=32',
           'num_heads=2', 'patch_size=7', 'img_size=14', 'in_chans=1', 'num_classes=3']


def _folder(root, num_classes, offset, seed):
    """``num_classes`` classes of 14x14 grayscale PNGs (8 train, 4 validation each), told apart by brightness."""
    return write_image_folder(root, size=14, num_classes=num_classes, offset=offset, step=90, spread=60, seed=seed)


@pytest.fixture(scope='module')
def pre(tmp_path_factory):
    """A pre-trained TGR-MoE (1 epoch on 3 classes): its checkpoint, export, and the 2-class fine-tuning data."""
    root = tmp_path_factory.mktemp('ft')
    old, new = _folder(root / 'old', 3, 0, 0), _folder(root / 'new', 2, 40, 1)
    teacher = train_main(COMMON + [
        '--data-dir', old, '--model', 'deit3_small_patch16_224', '--model-kwargs', 'embed_dim=32', 'num_heads=2',
        'patch_size=7', '--num-classes', '3', '--epochs', '1', '--output', str(root), '--experiment', 'teacher'])
    result = train_main(COMMON + TEACHER + [
        '--data-dir', old, '--model', 'tgr_moe_deit_tiny', '--model-kwargs', *MODEL_KW, '--num-classes', '3',
        '--epochs', '1', '--output', str(root), '--experiment', 'pre'])
    ckpt = os.path.join(result['output_dir'], 'last.pth.tar')
    export_checkpoint(ckpt, out=root / 'export')
    return argparse.Namespace(root=root, old=old, new=new, ckpt=ckpt, export=str(root / 'export'),
                              teacher=os.path.join(teacher['output_dir'], 'model_best.pth.tar'))


def _spec(pre, *extra):
    """The run of train_tgr.py's COMMON flags and ``extra`` on the fine-tuning data (resolved, not set up)."""
    return resolve_run(parse_args(COMMON + ['--data-dir', pre.new, '--output', str(pre.root), *extra]))


def _source_weights(pre):
    return torch.load(pre.ckpt, map_location='cpu', weights_only=False)['state_dict']


def _assert_all_but_head_equal(model, source, heads=('head',)):
    sd = model.state_dict()
    body = [k for k in source if k.split('.')[0] not in heads]
    assert set(body) == {k for k in sd if k.split('.')[0] not in heads}
    for k in body:
        assert torch.equal(sd[k], source[k]), k
    for h in heads:
        assert sd[f'{h}.weight'].shape[0] == 2 and source[f'{h}.weight'].shape[0] != 2


# --- head reset -----------------------------------------------------------------------------------
@pytest.mark.parametrize('model', ['tgr_moe_deit_tiny', 'vmoe_deit_tiny'])  # TGR -> TGR and TGR -> V-MoE
def test_initial_checkpoint_resets_the_head_and_keeps_every_other_tensor(pre, model):
    spec = _spec(pre, '--model', model, '--model-kwargs', *MODEL_KW, '--num-classes', '2',
                 '--initial-checkpoint', pre.ckpt)
    _assert_all_but_head_equal(create_model(spec.model, torch.device('cpu')), _source_weights(pre))


def test_local_dir_pretrained_resets_the_head_and_keeps_every_other_tensor(pre):
    spec = _spec(pre, '--model', f'local-dir:{pre.export}', '--pretrained', '--num-classes', '2')
    model = create_model(spec.model, torch.device('cpu'))
    _assert_all_but_head_equal(model, safetensors.torch.load_file(os.path.join(pre.export, 'model.safetensors')))
    # the run records the architecture and every kwarg that rebuilds it (config.json's, then the flags')
    assert spec.model.model_arch == 'tgr_moe_deit_tiny'
    expected = dict(embed_dim=32, num_heads=2, patch_size=7, num_experts=4, num_classes=2, img_size=14, in_chans=1)
    assert architecture_kwargs(spec.model.model_kwargs_resolved, expected) == architecture_kwargs(expected, expected)
    rebuilt = timm.create_model(spec.model.model_arch, **spec.model.model_kwargs_resolved)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_distilled_layout_resets_both_heads(pre, tmp_path):
    """DeiT's distilled layout: head and head_dist both fresh, from a prefixed checkpoint and from an export."""
    kw = dict(embed_dim=32, num_heads=2, patch_size=7, num_experts=4, img_size=14, in_chans=1, num_classes=3)
    source = timm.create_model('vmoe_deit_tiny_distilled', **kw).state_dict()
    run_args = argparse.Namespace(model='vmoe_deit_tiny_distilled', model_kwargs=kw)
    path = str(tmp_path / 'distilled.pth.tar')
    torch.save({'state_dict': {'module.' + k: v for k, v in source.items()}, 'args': run_args}, path)  # DDP-saved
    flags = ['--model-kwargs', 'embed_dim=32', 'num_heads=2', 'patch_size=7', 'num_experts=4', '--num-classes', '2']
    model = create_model(_spec(pre, '--model', 'vmoe_deit_tiny_distilled', *flags, '--initial-checkpoint', path).model,
                         torch.device('cpu'))
    _assert_all_but_head_equal(model, source, heads=('head', 'head_dist'))
    export_checkpoint(path, out=tmp_path / 'export')
    spec = _spec(pre, '--model', f'local-dir:{tmp_path / "export"}', '--pretrained', '--num-classes', '2')
    model = create_model(spec.model, torch.device('cpu'))
    _assert_all_but_head_equal(model, source, heads=('head', 'head_dist'))


# --- mismatched checkpoints -----------------------------------------------------------------------
@pytest.mark.parametrize('model, kwargs, names', [
    ('tgr_moe_deit_tiny', ['embed_dim=32', 'num_heads=2', 'patch_size=7', 'num_experts=8'],
     ['tgr_moe_deit_tiny with num_experts=4', 'tgr_moe_deit_tiny with num_experts=8', 'num_experts 4 vs 8',
      '--model-kwargs num_experts=4']),
    ('vmoe_deit_tiny', ['embed_dim=32', 'num_heads=2', 'patch_size=7', 'num_experts=4', 'top_k=2'],
     ['tgr_moe_deit_tiny with num_experts=4, top_k=1', 'vmoe_deit_tiny with num_experts=4, top_k=2', 'top_k 1 vs 2',
      '--model-kwargs top_k=1']),
    ('soft_moe_deit_tiny', MODEL_KW,
     ['tgr_moe_deit_tiny with num_experts=4', 'soft_moe_deit_tiny with num_experts=4', 'missing tensors',
      '--model tgr_moe_deit_tiny']),
    ('vmoe_deit_tiny', ['embed_dim=48', 'num_heads=2', 'patch_size=7', 'num_experts=4'],
     ['embed_dim=32', 'embed_dim=48', 'shape mismatches', '--model tgr_moe_deit_tiny --model-kwargs embed_dim=32']),
])
def test_mismatched_initial_checkpoint_fails_naming_both(pre, model, kwargs, names):
    spec = _spec(pre, '--model', model, '--model-kwargs', *kwargs, '--num-classes', '2',
                 '--initial-checkpoint', pre.ckpt)
    with pytest.raises(ValueError) as e:
        create_model(spec.model, torch.device('cpu'))
    msg = str(e.value)
    assert msg.startswith(f'--initial-checkpoint {pre.ckpt} was trained as ')
    for name in names:
        assert name in msg, (name, msg)


def test_checkpoint_without_args_still_fails_clearly(pre, tmp_path):
    dense = timm.create_model('deit3_small_patch16_224', embed_dim=32, num_heads=2, patch_size=7, img_size=14,
                              in_chans=1, num_classes=3)
    path = str(tmp_path / 'bare.pth')
    torch.save(dense.state_dict(), path)
    spec = _spec(pre, '--model', 'vmoe_deit_tiny', '--model-kwargs', *MODEL_KW, '--num-classes', '2',
                 '--initial-checkpoint', path)
    with pytest.raises(ValueError, match=r'trained as an architecture it does not record; this run builds '
                                         r'vmoe_deit_tiny with num_experts=4.*missing tensors'):
        create_model(spec.model, torch.device('cpu'))


# --- teacher routers carried over -----------------------------------------------------------------
def test_teacher_routers_carried_over_from_the_pretraining_run(pre):
    spec = _spec(pre, '--model', 'tgr_moe_deit_tiny', '--model-kwargs', *MODEL_KW, '--num-classes', '2',
                 '--initial-checkpoint', pre.ckpt, '--teacher-routers-from', pre.ckpt, *TEACHER, '--epochs', '1',
                 '--experiment', 'routers')
    t = setup_training(spec)
    saved = torch.load(pre.ckpt, map_location='cpu', weights_only=False)['task_state']['teacher_routers']
    carried = t.task.get_trainable_module().teacher_routers.state_dict()
    assert set(carried) == set(saved) == {'7.proj.weight', '9.proj.weight', '11.proj.weight'}
    for k in saved:
        assert torch.equal(carried[k], saved[k]), k


def test_teacher_routers_of_another_width_or_expert_count_fail_naming_both(pre):
    wider = [a if a != 'embed_dim=32' else 'embed_dim=48' for a in TEACHER]
    spec = _spec(pre, '--model', 'tgr_moe_deit_tiny', '--model-kwargs', *MODEL_KW, '--num-classes', '2',
                 '--teacher-routers-from', pre.ckpt, *wider, '--epochs', '1')
    with pytest.raises(ValueError, match=r'E=4 experts, teacher width 32\) do not fit .*teacher width 48'):
        setup_training(spec)
    spec = _spec(pre, '--model', 'tgr_moe_deit_tiny', '--model-kwargs', 'embed_dim=32', 'num_heads=2', 'patch_size=7',
                 'num_experts=8', '--num-classes', '2', '--teacher-routers-from', pre.ckpt, *TEACHER, '--epochs', '1')
    with pytest.raises(ValueError, match=r'E=4 experts.*E=8 experts.*num_experts'):
        setup_training(spec)
    with pytest.raises(ValueError, match='pass --teacher NAME'):  # refused as the run is resolved
        _spec(pre, '--model', 'vmoe_deit_tiny', '--model-kwargs', *MODEL_KW, '--num-classes', '2',
              '--teacher-routers-from', pre.ckpt, '--epochs', '1')


# --- end to end: transfer consistency -------------------------------------------------------------
def _probe_images(folder):
    """Every validation image (the probe set here: --probe-samples 8 = all 8), normalized as the run does."""
    files = sorted(glob.glob(os.path.join(folder, 'validation', '*', '*.png')))
    x = np.stack([np.asarray(Image.open(f), dtype=np.float32) / 255. for f in files])
    return (torch.from_numpy(x)[:, None] - 0.5) / 0.25


@torch.no_grad()
def _top1_experts(model, x):
    model.eval()(x)
    return {i: info.expert_index[..., 0].reshape(-1) for i, info in model.routing_infos().items()}


def _hand_consistency(start_sd, sd, x):
    """Per MoE block, the share of probe tokens whose top-1 expert is the same under both weights (counted here)."""
    model = timm.create_model('tgr_moe_deit_tiny', embed_dim=32, num_heads=2, patch_size=7, num_experts=4,
                              img_size=14, in_chans=1, num_classes=2)
    body = {k: v for k, v in start_sd.items() if not k.startswith('head.')}
    model.load_state_dict({**model.state_dict(), **body})  # the head plays no part in routing
    a = _top1_experts(model, x)
    model.load_state_dict(sd)
    b = _top1_experts(model, x)
    out = {}
    for i in a:
        same = sum(int(p) == int(q) for p, q in zip(a[i].tolist(), b[i].tolist()))
        out[str(i)] = same / len(a[i])
    return out


@pytest.mark.parametrize('start', ['initial-checkpoint', 'local-dir'])
def test_fine_tune_end_to_end_logs_consistency_with_the_starting_weights(pre, start):
    if start == 'initial-checkpoint':  # TGR -> V-MoE
        source = ['--model', 'vmoe_deit_tiny', '--model-kwargs', *MODEL_KW, '--initial-checkpoint', pre.ckpt,
                  '--teacher', 'none']
    else:  # TGR -> TGR from the export: the trained teacher (same input normalization), its routers carried over
        source = ['--model', f'local-dir:{pre.export}', '--pretrained', '--teacher-routers-from', pre.ckpt,
                  *[a for a in TEACHER if a != '--no-teacher-pretrained'], '--teacher-checkpoint', pre.teacher]
    result = train_main(COMMON + ['--data-dir', pre.new, '--output', str(pre.root), '--num-classes', '2',
                                  '--epochs', '2', '--experiment', f'ft-{start}', *source])
    out = result['output_dir']
    rows = read_metrics(os.path.join(out, 'metrics.jsonl'))
    x = _probe_images(pre.new)
    for row in rows:
        sd = torch.load(os.path.join(out, f"checkpoint-{row['epoch']}.pth.tar"), map_location='cpu',
                        weights_only=False)['state_dict']
        expected = _hand_consistency(_source_weights(pre), sd, x)
        logged = {b: r['consistency_pretrained'] for b, r in row['routing'].items()}
        assert logged == pytest.approx(expected, abs=1e-12), row['epoch']
        assert row['consistency_pretrained'] == pytest.approx(sum(expected.values()) / 3)
    ckpt = torch.load(os.path.join(out, 'last.pth.tar'), map_location='cpu', weights_only=False)
    assert ckpt['args'].model == ('vmoe_deit_tiny' if start == 'initial-checkpoint' else 'tgr_moe_deit_tiny')
    assert ckpt['args'].model_kwargs['num_classes'] == 2
    card_dir = pre.root / f'card-{start}'
    export_checkpoint(os.path.join(out, 'last.pth.tar'), out=card_dir)  # rebuilds from the recorded args
    card = (card_dir / 'README.md').read_text()
    assert f"consistency_pretrained: {100 * rows[-1]['consistency_pretrained']:.2f} %" in card
    assert pre.export not in card and pre.ckpt not in card  # local paths stay out of the card


def test_resume_keeps_the_reference_and_fresh_runs_log_none(pre):
    common = COMMON + ['--data-dir', pre.new, '--output', str(pre.root), '--num-classes', '2', '--epochs', '2',
                       '--model', 'vmoe_deit_tiny', '--model-kwargs', *MODEL_KW, '--teacher', 'none']
    full = train_main(common + ['--initial-checkpoint', pre.ckpt, '--experiment', 'full'])
    resumed = train_main(common + ['--initial-checkpoint', pre.ckpt, '--experiment', 'resumed', '--resume',
                                   os.path.join(full['output_dir'], 'checkpoint-0.pth.tar')])
    assert [r['epoch'] for r in resumed['rows']] == [1]
    assert resumed['rows'][0]['routing'] == full['rows'][1]['routing']
    assert resumed['rows'][0]['consistency_pretrained'] == full['rows'][1]['consistency_pretrained']
    fresh = train_main(common + ['--epochs', '1', '--experiment', 'fresh'])  # random init: nothing to compare with
    off = train_main(common + ['--epochs', '1', '--experiment', 'off', '--initial-checkpoint', pre.ckpt,
                               '--consistency-pretrained', 'off'])
    for row in fresh['rows'] + off['rows']:
        assert 'consistency_pretrained' not in row and 'consistency_pretrained' not in row['routing']['7']


def test_reset_classifier_for_new_classes_of_the_same_count(pre):
    """3 classes -> 3 other classes: the head loads unless --reset-classifier, which keeps every other tensor."""
    source = _source_weights(pre)
    flags = ['--model', 'tgr_moe_deit_tiny', '--model-kwargs', *MODEL_KW, '--num-classes', '3',
             '--initial-checkpoint', pre.ckpt]
    kept = create_model(_spec(pre, *flags).model, torch.device('cpu')).state_dict()
    assert all(torch.equal(kept[k], v) for k, v in source.items())
    reset = create_model(_spec(pre, *flags, '--reset-classifier').model, torch.device('cpu')).state_dict()
    for k, v in source.items():
        assert torch.equal(reset[k], v) != k.startswith('head.'), k
