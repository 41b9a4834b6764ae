"""timm's train.py with ``--device-modules timm_tgr``: the contract, through a loop that calls tasks as it does.

pytorch-image-models' train.py is not in timm's wheel, so these tests rebuild the parts of its loop
that touch the task (task creation by name from its globals, optimizer on the trainable module,
loss / grad_accum_steps, NativeScaler with need_update, update_ema, CheckpointSaver(task=...),
resume_task_checkpoint) and check what the plugin must guarantee.
"""
import types

import pytest
import torch
import torch.nn as nn
import timm
from timm.optim import create_optimizer_v2
from timm.task import ClassificationTask, TokenDistillationTask, LogitDistillationTask, resume_task_checkpoint
from timm.utils import CheckpointSaver, NativeScaler, unwrap_model

import timm_tgr  # noqa: F401
from timm_tgr.task.tgr_task import TGRTask
from timm_tgr.task.vmoe_task import VMoETask
from timm_tgr.task.timm_train import create_task, install, is_timm_train, pop_guidance_kwargs

TINY = dict(embed_dim=32, num_heads=2, patch_size=4, img_size=16, in_chans=1, num_classes=3, num_experts=4)
TEACHER = "{'embed_dim': 32, 'num_heads': 2, 'patch_size': 4, 'num_classes': 3}"


def _train_py_globals():
    """The names timm's train.py imports and defines that the plugin looks at."""
    return {'ClassificationTask': ClassificationTask, 'TokenDistillationTask': TokenDistillationTask,
            'LogitDistillationTask': LogitDistillationTask, 'train_one_epoch': lambda *a, **k: None}


def _tgr_model(**extra):
    import ast
    return timm.create_model('tgr_moe_deit_tiny', **TINY, tgr_teacher='deit3_small_patch16_224',
                             tgr_teacher_kwargs=ast.literal_eval(TEACHER), tgr_teacher_pretrained=False, **extra)


def test_install_only_swaps_tasks_in_timm_train():
    ns = _train_py_globals()
    assert is_timm_train(ns) and install(ns)
    assert ns['ClassificationTask'] is create_task
    assert ns['TokenDistillationTask'].__name__ == 'MoEAwareTokenDistillationTask'
    assert not is_timm_train({'ClassificationTask': ClassificationTask})  # another script: untouched
    import sys
    assert sys.modules['__main__'].__dict__.get('ClassificationTask') is not create_task


def test_create_task_dispatch():
    dense = timm.create_model('deit_tiny_patch16_224', embed_dim=32, num_heads=2, depth=2, patch_size=4, img_size=16)
    assert type(create_task(model=dense, criterion=nn.CrossEntropyLoss(), verbose=False)) is ClassificationTask
    vmoe = timm.create_model('vmoe_deit_tiny', **TINY)
    assert isinstance(create_task(model=vmoe, verbose=False), VMoETask)
    assert isinstance(create_task(model=_tgr_model(), verbose=False), TGRTask)
    off = timm.create_model('tgr_moe_deit_tiny', **TINY, tgr_enable=False)
    assert isinstance(create_task(model=off, verbose=False), VMoETask)


def test_guidance_kwargs_are_validated():
    with pytest.raises(TypeError, match='unknown TGR option'):
        pop_guidance_kwargs({'tgr_distil_weight': 5.0})
    with pytest.raises(TypeError, match='must be int or float'):
        pop_guidance_kwargs({'tgr_distill_weight': 'five'})
    # the model keeps its tgr_* kwargs as a plain dict; the task checks them where it is built
    assert timm.create_model('vmoe_deit_tiny', **TINY, tgr_distill_weight=2.0).guidance_cfg == {'distill_weight': 2.0}
    typo = timm.create_model('vmoe_deit_tiny', **TINY, tgr_distil_weight=5.0)
    with pytest.raises(TypeError, match=r"unknown TGR option 'tgr_distil_weight': the tgr_\* model kwargs are"):
        create_task(model=typo, verbose=False)
    with pytest.raises(TypeError, match=r"tgr_distill_weight='five' must be int or float"):
        create_task(model=_tgr_model(tgr_distill_weight='five'), verbose=False)
    with pytest.raises(ValueError, match='tgr_total_steps'):
        create_task(model=_tgr_model(tgr_schedule='first'), verbose=False)
    with pytest.raises(ValueError, match='adaptive'):
        create_task(model=_tgr_model(tgr_schedule='adaptive'), verbose=False)


def test_teacher_follows_the_student_image_size_or_names_the_kwarg():
    """The named teacher is created at the student's img_size and channels unless tgr_teacher_kwargs say
    otherwise; a grid that still differs names the model kwarg that fixes it."""
    import ast
    kwargs = {k: v for k, v in ast.literal_eval(TEACHER).items()}
    task = create_task(model=_tgr_model(), verbose=False)
    patch_embed = task.teacher.model.patch_embed
    assert tuple(patch_embed.img_size) == (16, 16) and patch_embed.proj.in_channels == 1
    wrong = timm.create_model('tgr_moe_deit_tiny', **TINY, tgr_teacher='deit3_small_patch16_224',
                              tgr_teacher_kwargs=dict(kwargs, img_size=32), tgr_teacher_pretrained=False)
    fix = r"--model-kwargs \"tgr_teacher_kwargs=\{'img_size': 16\}\""
    with pytest.raises(ValueError, match=r'token-grid mismatch.*' + fix):
        create_task(model=wrong, verbose=False)


def test_vmoe_task_adds_exactly_the_load_loss_gradient():
    """Router gradient under the plugin's task == timm's ClassificationTask gradient + lambda * grad(L_load)."""
    torch.manual_seed(0)
    model = timm.create_model('vmoe_deit_tiny', **TINY, router_noise_std=0.)
    x, y = torch.randn(6, 1, 16, 16), torch.randint(0, 3, (6,))
    router = model.blocks[7].mlp.router.proj.weight

    def grad(task):
        model.zero_grad()
        task(x, y)['loss'].backward()
        return router.grad.clone()

    g_plugin = grad(create_task(model=model, criterion=nn.CrossEntropyLoss(), verbose=False))
    g_timm = grad(ClassificationTask(model, criterion=nn.CrossEntropyLoss(), verbose=False))
    model.zero_grad()
    model(x)
    aux = 0.
    for i in (7, 9, 11):  # later layers' load losses reach block 7's router through its gates too
        probs = model.blocks[i].mlp.routing.probs  # independent: L_load recomputed from the probabilities
        imp = probs.reshape(-1, probs.shape[-1]).mean(0)  # Imp_e, then (std / mean)^2 by hand
        aux = aux + 0.005 * ((imp - imp.mean()).pow(2).mean().sqrt() / imp.mean()) ** 2
    aux.backward()
    assert not torch.allclose(g_plugin, g_timm)
    torch.testing.assert_close(g_plugin - g_timm, router.grad, rtol=1e-3, atol=1e-9)


def test_kd_task_with_moe_student_adds_aux_loss_and_refuses_tgr():
    ns = _train_py_globals()
    install(ns)
    teacher = timm.create_model('deit_tiny_patch16_224', embed_dim=32, num_heads=2, depth=2, patch_size=4,
                                img_size=16, in_chans=1, num_classes=3)
    student = timm.create_model('vmoe_deit_tiny', **TINY)
    task = ns['LogitDistillationTask'](student_model=student, teacher_model=teacher, criterion=nn.CrossEntropyLoss(),
                                       verbose=False)
    out = task(torch.randn(2, 1, 16, 16), torch.tensor([0, 1]))
    assert 'moe_aux_loss' in out and float(out['moe_aux_loss']) > 0
    with pytest.raises(ValueError, match='not supported'):
        ns['LogitDistillationTask'](student_model=_tgr_model(), teacher_model=teacher, verbose=False)


@pytest.mark.parametrize('accum, fp16', [(1, False), (2, True)])
def test_train_py_loop_contract(tmp_path, accum, fp16):
    """The train.py sequence: loss / accum, scaler(need_update), update_ema, checkpoint, resume."""
    ns = _train_py_globals()
    install(ns)
    torch.manual_seed(0)
    model = _tgr_model()
    task = ns['ClassificationTask'](model=model, criterion=nn.CrossEntropyLoss(), device=torch.device('cpu'),
                                    dtype=None, verbose=False)
    assert isinstance(task, TGRTask)
    trainable = task.get_trainable_module()
    optimizer = create_optimizer_v2(trainable, opt='adamw', lr=1e-3)
    task.setup_ema(decay=0.9)
    scaler = NativeScaler(device='cpu') if fp16 else None
    autocast = (lambda: torch.autocast('cpu', dtype=torch.float16)) if fp16 else torch.autocast
    routers_before = {k: v.clone() for k, v in trainable.teacher_routers.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    trainable.train()
    num_updates = 0
    for step in range(4):
        x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 3, (4,))
        need_update = (step + 1) % accum == 0
        with (autocast() if fp16 else torch.autocast('cpu', enabled=False)):
            result = task(x, y)
        loss = result['loss'] / accum
        assert torch.isfinite(loss) and float(result['distill_loss']) > 0
        if scaler is not None:
            scaler(loss, optimizer, parameters=task.get_clip_parameters(), need_update=need_update)
        else:
            loss.backward()
            if need_update:
                optimizer.step()
        if need_update:
            optimizer.zero_grad()
            num_updates += 1
            task.update_ema(step=num_updates)
    # the teacher routers trained, the teacher did not
    assert any(not torch.equal(v, routers_before[k]) for k, v in trainable.teacher_routers.state_dict().items())
    assert all(torch.equal(v, teacher_before[k]) for k, v in task.teacher.state_dict().items())
    # EMA holds the student only
    ema = unwrap_model(task.get_eval_model(ema=True))
    assert set(ema.state_dict()) == set(model.state_dict())

    saver = CheckpointSaver(model=model, optimizer=optimizer, args=types.SimpleNamespace(model='tgr_moe_deit_tiny'),
                            amp_scaler=scaler, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), task=task)
    saver.args = None
    saver.save_checkpoint(0, metric=1.0)
    ckpt = torch.load(tmp_path / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert set(ckpt['state_dict']) == set(model.state_dict())  # student only, never the teacher
    assert set(ckpt['state_dict_ema']) == set(model.state_dict())
    assert set(ckpt['task_state']['teacher_routers']) == {'7.proj.weight', '9.proj.weight', '11.proj.weight'}

    fresh = _tgr_model()
    task2 = create_task(model=fresh, criterion=nn.CrossEntropyLoss(), verbose=False)
    opt2 = create_optimizer_v2(task2.get_trainable_module(), opt='adamw', lr=1e-3)
    resume_task_checkpoint(task2, str(tmp_path / 'last.pth.tar'), optimizer=opt2, log_info=False)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    for k, v in trainable.teacher_routers.state_dict().items():
        assert torch.equal(task2.get_trainable_module().teacher_routers.state_dict()[k], v)
    assert task2.schedule.step == task.schedule.step == 4


def test_prepare_distributed_on_cpu_accepts_train_py_device_ids():
    """timm's train.py calls prepare_distributed(device_ids=[device]) even for a CPU device."""
    import socket
    import torch.distributed as dist
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        task = create_task(model=_tgr_model(), criterion=nn.CrossEntropyLoss(), verbose=False)
        task.prepare_distributed(device_ids=[torch.device('cpu')], broadcast_buffers=True)
        out = task(torch.randn(2, 1, 16, 16), torch.tensor([0, 1]))
        out['loss'].backward()
        assert type(task.get_trainable_module()).__name__ == 'DistributedDataParallel'
    finally:
        dist.destroy_process_group()


def test_train_py_fine_tune_carries_teacher_routers_over(tmp_path):
    """``--model-kwargs tgr_teacher_routers=CKPT``: the pre-training run's teacher routers start the fine-tuning
    task (a new class count changes no router); another expert count fails naming both."""
    task = create_task(model=_tgr_model(), criterion=nn.CrossEntropyLoss(), verbose=False)
    routers = task.get_trainable_module().teacher_routers
    with torch.no_grad():
        for p in routers.parameters():
            p.normal_()  # unlike a fresh init
    opt = create_optimizer_v2(task.get_trainable_module(), opt='adamw', lr=1e-3)
    CheckpointSaver(model=task.get_trainable_module().student, optimizer=opt, checkpoint_dir=str(tmp_path),
                    recovery_dir=str(tmp_path), task=task).save_checkpoint(0, metric=1.0)
    path = str(tmp_path / 'last.pth.tar')
    import ast
    guidance = dict(tgr_teacher='deit3_small_patch16_224', tgr_teacher_kwargs=ast.literal_eval(TEACHER),
                    tgr_teacher_pretrained=False, tgr_teacher_routers=path)
    tuned = timm.create_model('tgr_moe_deit_tiny', **dict(TINY, num_classes=5), **guidance)
    task2 = create_task(model=tuned, criterion=nn.CrossEntropyLoss(), verbose=False)
    carried = task2.get_trainable_module().teacher_routers.state_dict()
    for k, v in routers.state_dict().items():
        assert torch.equal(carried[k], v), k
    wider = timm.create_model('tgr_moe_deit_tiny', **dict(TINY, num_experts=8), **guidance)
    with pytest.raises(ValueError, match=r'E=4 experts.*E=8 experts.*num_experts'):
        create_task(model=wider, criterion=nn.CrossEntropyLoss(), verbose=False)
