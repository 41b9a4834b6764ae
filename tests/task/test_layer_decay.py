"""``--layer-decay`` with TGR: the task's trainable module (student + teacher routers) groups the student's
parameters by the student's own ``group_matcher`` and puts the teacher routers in the last group (full learning
rate), on timm's train.py (the optimizer timm builds over ``task.trainable_module``) and on train_tgr.py."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2

from timm_tgr.task.tgr_task import TGRTask

DECAY = 0.5


def _task():
    student = timm.create_model('tgr_moe_deit_tiny', img_size=32, num_classes=5, depth=4, moe_layers=(1, 3))
    teacher = VisionTransformer(img_size=32, patch_size=16, embed_dim=48, depth=4, num_heads=2, num_classes=5,
                                no_embed_class=True)
    return TGRTask(student, teacher)


def _lr_scales(optimizer, module):
    """``{parameter name: lr_scale}`` of the optimizer's groups."""
    names = {id(p): n for n, p in module.named_parameters()}
    return {names[id(p)]: g['lr_scale'] for g in optimizer.param_groups for p in g['params']}


def _check(scales, num_blocks=4):
    # timm's ViT groups: patch/pos embed = layer 0, block i = layer i + 1, norm/head = the last layer (scale 1)
    layers = num_blocks + 2
    assert scales['student.patch_embed.proj.weight'] == pytest.approx(DECAY ** (layers - 1))
    for i in range(num_blocks):
        assert scales[f'student.blocks.{i}.attn.qkv.weight'] == pytest.approx(DECAY ** (layers - 2 - i))
    assert scales['student.blocks.1.mlp.router.proj.weight'] == scales['student.blocks.1.attn.qkv.weight']
    assert scales['student.head.weight'] == pytest.approx(1.)
    routers = {n: s for n, s in scales.items() if n.startswith('teacher_routers.')}
    assert routers and all(s == pytest.approx(1.) for s in routers.values())


def test_layer_decay_on_timm_train():
    """What timm's train.py does with --layer-decay: create_optimizer_v2 over the task's trainable module."""
    task = _task()
    module = task.trainable_module
    optimizer = create_optimizer_v2(module, opt='adamw', lr=1e-3, weight_decay=0.05, layer_decay=DECAY)
    _check(_lr_scales(optimizer, module))
    assert len({id(p) for g in optimizer.param_groups for p in g['params']}) == len(list(module.parameters()))


def test_layer_decay_on_train_tgr():
    from timm_tgr.train import parse_args
    from timm_tgr.train.setup import create_optimization
    from timm_tgr.train.spec import resolve_run
    spec = resolve_run(parse_args(['--model', 'tgr_moe_deit_tiny', '--opt', 'adamw', '--lr', '1e-3',
                                   '--layer-decay', str(DECAY)]))
    task = _task()
    optim = create_optimization(spec, task, task.trainable_module.student, batches_per_epoch=1,
                                device=torch.device('cpu'))
    _check(_lr_scales(optim.optimizer, task.get_trainable_module()))


def test_group_matcher_coarse_and_no_student_matcher():
    module = _task().trainable_module
    coarse = module.group_matcher(coarse=True)
    assert coarse('student.blocks.3.mlp.experts.fc1_weight') == coarse('student.blocks.3.norm1.weight')
    assert coarse('teacher_routers.1.proj.weight') == coarse('student.head.weight')
