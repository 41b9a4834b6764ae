"""TGRTask (and VMoETask): teacher isolation, gradients, KL, schedule in the loss, task state, bad inputs."""
import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from timm_tgr.task.teacher import FeatureTeacher, build_teacher, default_teacher, resolve_layer_map
from timm_tgr.task.tgr_task import TGRTask
from timm_tgr.task.vmoe_task import VMoETask


def tiny_teacher(img_size=32, depth=12, dim=48, **kw):
    return VisionTransformer(img_size=img_size, patch_size=16, embed_dim=dim, depth=depth, num_heads=2,
                             num_classes=5, no_embed_class=True, **kw)


def tiny_student(name='tgr_moe_deit_tiny', img_size=32, **kw):
    return timm.create_model(name, img_size=img_size, num_classes=5, **kw)


def _batch(n=3, size=32):
    return torch.randn(n, 3, size, size), torch.randint(0, 5, (n,))


def _hand_teacher_probs(task, x):
    """p_t by hand: the teacher's block outputs (its own forward_intermediates) through each router."""
    base = task.teacher.model
    feats = base.forward_intermediates(x, indices=sorted(set(task.layer_map.values())), output_fmt='NLC',
                                       return_prefix_tokens=True, intermediates_only=True, norm=False)
    by_block = {b: torch.cat([pre, sp], 1) for b, (sp, pre) in zip(sorted(set(task.layer_map.values())), feats)}
    routers = task.trainable_module.teacher_routers
    return {s: torch.softmax(by_block[t] @ routers[str(s)].proj.weight.t(), -1) for s, t in task.layer_map.items()}


def test_student_state_dict_has_no_teacher():
    student = tiny_student()
    keys_before = set(student.state_dict())
    task = TGRTask(student, tiny_teacher())
    task.train()
    task(*_batch())['loss'].backward()
    eval_keys = set(task.get_eval_model().state_dict())
    assert eval_keys == keys_before
    assert not any('teacher' in k for k in eval_keys)
    ckpt = task.get_checkpoint_state()
    assert set(ckpt['state_dict']) == keys_before
    assert set(ckpt['task_state']) == {'teacher_routers', 'distill_schedule'}


def test_teacher_is_frozen_and_truncated():
    teacher = tiny_teacher()
    task = TGRTask(tiny_student(), teacher, layer_map={7: 3, 9: 5, 11: 5})
    task.train()
    assert not task.teacher.training
    assert len(task.teacher.model.blocks) == 6  # truncated after the deepest needed block
    task(*_batch())['loss'].backward()
    assert all(p.grad is None and not p.requires_grad for p in task.teacher.parameters())
    trainable = {id(p) for p in task.trainable_module.parameters()}
    assert not any(id(p) in trainable for p in task.teacher.parameters())


def test_teacher_routers_learn_only_from_their_own_losses():
    task = TGRTask(tiny_student(router_noise_std=0.), tiny_teacher())
    task.train()
    x, y = _batch()
    task(x, y)['loss'].backward()
    routers = task.trainable_module.teacher_routers
    got = {k: r.proj.weight.grad.clone() for k, r in routers.items()}
    # reference: L_teacher = sum_i 0.005 * CV^2(Imp(p_t)) + 0.005 * mean token entropy(p_t), by hand
    p_t = _hand_teacher_probs(task, x)
    ref_loss = 0.
    for p in p_t.values():
        p = p.reshape(-1, p.shape[-1])
        imp = p.mean(0)
        ref_loss = ref_loss + 0.005 * (imp.std(unbiased=False) / imp.mean()) ** 2 \
            + 0.005 * (-(p * p.log()).sum(-1).mean())
    weights = [routers[k].proj.weight for k in got]
    ref_grads = torch.autograd.grad(ref_loss, weights)
    for (k, g), ref in zip(got.items(), ref_grads):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-8)


def test_kl_matches_hand_computation_and_reaches_student_router():
    torch.manual_seed(1)
    student = tiny_student(router_noise_std=0.)
    task = TGRTask(student, tiny_teacher())
    task.eval()
    x, y = _batch()
    out = task(x, y)
    p_t = _hand_teacher_probs(task, x)
    kls = []
    for s, pt in p_t.items():
        p = student.routing_infos()[s].probs
        pt64, p64 = pt.detach().double().reshape(-1, pt.shape[-1]), p.detach().double().reshape(-1, p.shape[-1])
        per_token = [sum(pt64[n, e] * math.log(pt64[n, e] / p64[n, e]) for e in range(pt64.shape[1]))
                     for n in range(pt64.shape[0])]
        kls.append(float(sum(per_token)) / len(per_token))
    assert out['distill_loss'].item() == pytest.approx(sum(kls) / len(kls), rel=1e-5)

    # the distillation term (lambda 5) is the only difference between these two losses' router gradients
    def router_grad(distill_weight):
        torch.manual_seed(2)
        st = tiny_student(router_noise_std=0.)
        t = TGRTask(st, tiny_teacher(), distill_weight=distill_weight)
        t.train()
        t(x, y)['loss'].backward()
        return st.blocks[7].mlp.router.proj.weight.grad.clone(), st, t
    g5, st5, t5 = router_grad(5.0)
    g0, _, _ = router_grad(0.0)
    st5.zero_grad()
    t5.eval()
    t5(x, y)
    p_t = _hand_teacher_probs(t5, x)
    kl = torch.stack([F.kl_div(st5.routing_infos()[s].probs.log().reshape(-1, 16),
                               pt.detach().reshape(-1, 16), reduction='batchmean') for s, pt in p_t.items()]).mean()
    g_kl, = torch.autograd.grad(kl, st5.blocks[7].mlp.router.proj.weight)
    assert g_kl.abs().sum() > 0
    torch.testing.assert_close(g5 - g0, 5.0 * g_kl, rtol=1e-3, atol=1e-7)


def test_schedule_first_half_turns_off_at_the_right_step():
    task = TGRTask(tiny_student(), tiny_teacher(), schedule='first', total_steps=10, distill_fraction=0.5)
    task.train()
    x, y = _batch()
    flags = []
    for _ in range(10):
        out = task(x, y)
        flags.append(bool(out['distill_active']))
        expected = out['task_loss'] + out['moe_aux_loss'] + out['teacher_router_loss']
        if flags[-1]:
            expected = expected + 5.0 * out['distill_loss']
        assert out['loss'].item() == pytest.approx(expected.item(), rel=1e-5)
    assert flags == [True] * 5 + [False] * 5
    task.eval()
    task(x, y)
    assert task.schedule.step == 10  # eval forwards do not advance the schedule


def test_task_state_round_trip():
    task = TGRTask(tiny_student(), tiny_teacher(), schedule='first', total_steps=8)
    task.train()
    for _ in range(3):
        x, y = _batch()
        task(x, y)['loss'].backward()
        with torch.no_grad():
            for p in task.trainable_module.teacher_routers.parameters():
                p -= 0.1 * p.grad
    state = task.get_task_state()
    other = TGRTask(tiny_student(), tiny_teacher(), schedule='first', total_steps=8)
    other.load_task_state(state)
    for k, r in task.trainable_module.teacher_routers.items():
        assert torch.equal(r.proj.weight, other.trainable_module.teacher_routers[k].proj.weight)
    assert other.schedule.step == 3
    with pytest.raises(RuntimeError, match='no TGR task state'):
        other.load_task_state({})


def test_task_state_format():
    """task_state is a checkpoint format: its keys and tensor shapes must not change (old runs must resume)."""
    task = TGRTask(tiny_student(), tiny_teacher(dim=48), schedule='first', total_steps=8)
    state = task.get_task_state()
    assert set(state) == {'teacher_routers', 'distill_schedule'}
    routers = state['teacher_routers']
    assert set(routers) == {'7.proj.weight', '9.proj.weight', '11.proj.weight'}
    assert all(v.shape == (16, 48) for v in routers.values())  # tgr_moe_deit_tiny: E=16; teacher dim 48
    assert state['distill_schedule'] == {'mode': 'first', 'total_steps': 8, 'fraction': 0.5, 'step': 0,
                                         'stopped_at': None, 'history': []}


def test_teacher_routers_from_another_run(tmp_path):
    """Carried-over routers load only into the same blocks, expert count and teacher width; errors name both."""
    from timm_tgr.task.teacher_router import read_teacher_routers
    task = TGRTask(tiny_student(), tiny_teacher(dim=48))
    routers = {f'{i}.proj.weight': torch.randn(16, 48) for i in (7, 9, 11)}
    path = tmp_path / 'pre.pth.tar'
    torch.save({'state_dict': {}, 'task_state': {'teacher_routers': routers}}, path)
    task.load_teacher_routers(read_teacher_routers(str(path)), source=str(path))
    for i in (7, 9, 11):
        assert torch.equal(task.trainable_module.teacher_routers[str(i)].proj.weight, routers[f'{i}.proj.weight'])
    narrow = TGRTask(tiny_student(), tiny_teacher(dim=32))
    with pytest.raises(ValueError, match=r'pre.pth.tar \(MoE blocks \[7, 9, 11\], E=16 experts, teacher width 48\) '
                                         r"do not fit this run's \(MoE blocks \[7, 9, 11\], E=16 experts, teacher "
                                         r'width 32\)'):
        narrow.load_teacher_routers(read_teacher_routers(str(path)), source=str(path))
    fewer = TGRTask(tiny_student(num_experts=8), tiny_teacher(dim=48))
    with pytest.raises(ValueError, match=r'E=16 experts.*E=8 experts.*num_experts'):
        fewer.load_teacher_routers(routers, source='pre')
    torch.save({'state_dict': {}}, path)  # a V-MoE run: no task_state
    with pytest.raises(ValueError, match='holds no teacher routers'):
        read_teacher_routers(str(path))


def test_ema_covers_the_student_only():
    student = tiny_student()
    task = TGRTask(student, tiny_teacher())
    ema = task.setup_ema(decay=0.5)
    assert set(ema.module.state_dict()) == set(student.state_dict())
    task.update_ema(step=1)
    assert task.get_task_state(ema=True) == {}


def test_teacher_input_renormalized():
    student = tiny_student()
    teacher = tiny_teacher()
    teacher.pretrained_cfg = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    task = TGRTask(student, teacher)
    x, _ = _batch()
    feats = task.teacher_features(x)
    mean = torch.tensor(student.pretrained_cfg['mean']).view(1, 3, 1, 1)
    std = torch.tensor(student.pretrained_cfg['std']).view(1, 3, 1, 1)
    x_teacher = (x * std + mean - 0.5) / 0.5
    ref = task.teacher.model.forward_intermediates(x_teacher, indices=[11], output_fmt='NLC',
                                                   return_prefix_tokens=True, intermediates_only=True)[0]
    torch.testing.assert_close(feats[11], torch.cat([ref[1], ref[0]], 1))


def test_teacher_checkpoint_brings_its_input_normalization(tmp_path):
    """A train_tgr.py teacher checkpoint's recorded mean/std become the teacher's cfg (what TGR converts to);
    a bare state_dict records none: its mean/std must be given (or come from an export's config.json)."""
    import argparse
    from timm_tgr.task.teacher import build_teacher
    kw = dict(embed_dim=32, num_heads=2, patch_size=7, img_size=14, in_chans=1, num_classes=3)
    dense = timm.create_model('deit3_small_patch16_224', **kw)
    path = tmp_path / 'teacher.pth.tar'
    torch.save({'state_dict': dense.state_dict(), 'args': argparse.Namespace(mean=[0.25], std=[0.5])}, path)
    teacher = build_teacher('deit3_small_patch16_224', checkpoint=str(path), **kw)
    assert (teacher.pretrained_cfg['mean'], teacher.pretrained_cfg['std']) == ((0.25,), (0.5,))
    torch.save(dense.state_dict(), tmp_path / 'bare.pth')
    with pytest.raises(ValueError, match='records no input normalization .*pass mean= and std='):
        build_teacher('deit3_small_patch16_224', checkpoint=str(tmp_path / 'bare.pth'), **kw)
    teacher = build_teacher('deit3_small_patch16_224', checkpoint=str(tmp_path / 'bare.pth'), mean=0.3, std=0.6, **kw)
    assert (teacher.pretrained_cfg['mean'], teacher.pretrained_cfg['std']) == ((0.3,), (0.6,))
    (tmp_path / 'config.json').write_text('{"pretrained_cfg": {"mean": [0.2], "std": [0.4]}}')
    teacher = build_teacher('deit3_small_patch16_224', checkpoint=str(tmp_path / 'bare.pth'), **kw)
    assert (teacher.pretrained_cfg['mean'], teacher.pretrained_cfg['std']) == ((0.2,), (0.4,))


def test_teacher_checkpoint_has_one_meaning_for_every_caller(tmp_path):
    """TGRTask's teacher_pretrained_path loads as build_teacher's checkpoint:
    strictly, with the run's mean/std; a checkpoint of another architecture fails naming the kwargs."""
    import argparse
    dense = timm.create_model('test_vit', img_size=32)  # timm's 6-block test ViT, patch 16
    path = tmp_path / 'teacher.pth.tar'
    torch.save({'state_dict': dense.state_dict(), 'args': argparse.Namespace(mean=[0.25] * 3, std=[0.5] * 3)}, path)
    task = TGRTask(tiny_student(), 'test_vit', teacher_pretrained_path=str(path), layer_map='last')
    cfg = task.teacher.model.pretrained_cfg
    assert (cfg['mean'], cfg['std']) == ((0.25,) * 3, (0.5,) * 3)
    for k, v in task.teacher.model.state_dict().items():
        assert torch.equal(v, dense.state_dict()[k]), k
    teacher = FeatureTeacher(build_teacher('test_vit', checkpoint=str(path), img_size=32), blocks=[5])
    assert teacher.model.pretrained_cfg['mean'] == (0.25,) * 3
    with pytest.raises(RuntimeError, match=r"does not fit 'test_vit' built with .*pos_embed.*Pass the architecture"):
        build_teacher('test_vit', checkpoint=str(path))  # img_size 160, not 32
    with pytest.raises(TypeError, match='takes the built teacher'):
        FeatureTeacher('test_vit', blocks=[5])


def test_named_teacher_follows_the_student_image_size():
    """A named teacher built for a student takes the student's img_size unless its kwargs give one."""
    from timm_tgr.task.teacher import build_teacher
    student = tiny_student(img_size=48)
    small = dict(embed_dim=32, num_heads=2, depth=2)
    teacher = build_teacher('deit3_small_patch16_224', pretrained=False, student=student, **small)
    assert tuple(teacher.patch_embed.img_size) == (48, 48)
    # a random teacher normalizes as the student does: nothing to convert
    assert teacher.pretrained_cfg['mean'] == student.pretrained_cfg['mean']
    teacher = build_teacher('deit3_small_patch16_224', pretrained=False, student=student, img_size=64, **small)
    assert tuple(teacher.patch_embed.img_size) == (64, 64)


def test_named_teacher_follows_the_student_channels():
    """A grayscale student's named teacher reads 1-channel images unless its kwargs say otherwise; through the task
    factory (train_tgr.py, the API) the guided step then runs."""
    from timm_tgr.task import GuidanceConfig, create_training_task
    from timm_tgr.task.teacher import build_teacher
    student = tiny_student(img_size=16, in_chans=1, patch_size=4, embed_dim=32, num_heads=2, num_experts=4)
    small = dict(embed_dim=32, num_heads=2, patch_size=4, num_classes=5)
    guidance = GuidanceConfig(teacher='deit3_small_patch16_224', teacher_kwargs=small, teacher_pretrained=False)
    task = create_training_task(student, guidance=guidance, verbose=False)
    assert task.teacher.model.patch_embed.proj.in_channels == 1
    out = task(torch.randn(2, 1, 16, 16), torch.tensor([0, 1]))
    assert torch.isfinite(out['loss'])
    rgb = build_teacher('deit3_small_patch16_224', pretrained=False, student=student, in_chans=3, **small)
    assert rgb.patch_embed.proj.in_channels == 3


def test_distilled_student_gets_teacher_class_token_on_both_prefix_tokens():
    student = tiny_student('tgr_moe_deit_tiny_distilled')
    task = TGRTask(student, tiny_teacher())
    x, y = _batch()
    feats = task.teacher_features(x)
    assert feats[7].shape[1] == 2 + 4
    torch.testing.assert_close(feats[7][:, 0], feats[7][:, 1])
    assert torch.isfinite(task(x, y)['loss'])


def test_layer_map_last():
    task = TGRTask(tiny_student(), tiny_teacher(), layer_map='last')
    assert task.layer_map == {7: 11, 9: 11, 11: 11}
    assert resolve_layer_map([7, 9, 11], 12) == {7: 7, 9: 9, 11: 11}


def test_default_teachers_follow_table_s2():
    assert default_teacher('tgr_moe_deit_tiny') == 'deit3_small_patch16_224.fb_in22k_ft_in1k'
    assert default_teacher('tgr_moe_deit_small_distilled') == 'deit3_base_patch16_224.fb_in22k_ft_in1k'
    assert default_teacher('vmoe_deit_base') == 'deit3_base_patch16_224.fb_in22k_ft_in1k'
    # Table S2: teacher routers add 3 * 384 * 16 (Tiny) and 3 * 768 * 8 (Small/Base) parameters
    for name, extra in (('tgr_moe_deit_tiny', 3 * 384 * 16), ('tgr_moe_deit_small', 3 * 768 * 8)):
        teacher = timm.create_model(default_teacher(name).split('.')[0], img_size=32, num_classes=0)
        task = TGRTask(tiny_student(name), teacher)
        assert sum(p.numel() for p in task.trainable_module.teacher_routers.parameters()) == extra


def test_teacher_route_mode_uses_teacher_choices():
    student = tiny_student(router_noise_std=0.)
    task = TGRTask(student, tiny_teacher(), mode='teacher_route')
    task.train()
    x, y = _batch()
    task(x, y)
    p_t = _hand_teacher_probs(task, x)
    for s, pt in p_t.items():
        assert torch.equal(student.routing_infos()[s].expert_index[..., 0], pt.argmax(-1))
        torch.testing.assert_close(student.routing_infos()[s].gates[..., 0], pt.max(-1).values)
    logits = task.forward_teacher_route(x)
    assert logits.shape == (3, 5)
    assert all(m.routing_override is None for m in student.get_moe_layers().values())


def _teacher_route_step(student, **weights):
    """One teacher-route training step (backward done) and its hand reference: a copy of the student taken before
    the step, routed by p_t computed by hand from the teacher's blocks. Returns (task, output, reference logits, y,
    the teacher-router weights in block order)."""
    torch.manual_seed(0)
    reference_student = copy.deepcopy(student)
    task = TGRTask(student, tiny_teacher(), mode='teacher_route', **weights)
    task.train()
    x, y = _batch()
    out = task(x, y)
    out['loss'].backward()
    p_t = _hand_teacher_probs(task, x)
    reference_student.train()
    reference_student.set_routing_override(p_t)
    routers = task.trainable_module.teacher_routers
    return task, out, reference_student, reference_student(x), y, p_t, [routers[str(s)].proj.weight for s in p_t]


@pytest.mark.parametrize('name', ['tgr_moe_deit_tiny', 'ec_moe_deit_tiny'])
def test_teacher_route_task_loss_alone_trains_the_teacher_router(name):
    """Eq. S1: with every auxiliary weight 0, the task loss alone must reach the teacher router (its
    probabilities are the combine weights) and must not reach the student router. Reference: the teacher's block
    outputs through the same router weights route a copy of the student; its cross-entropy, differentiated by hand
    w.r.t. the router weights."""
    torch.manual_seed(0)
    student = tiny_student(name, router_noise_std=0.)
    _, out, _, ref_logits, y, _, weights = _teacher_route_step(student, teacher_load_weight=0., distill_weight=0.)
    ref_loss = F.cross_entropy(ref_logits, y)
    ref_grads = torch.autograd.grad(ref_loss, weights)
    assert ref_loss.item() == pytest.approx(out['loss'].item(), rel=1e-5)
    for w, ref in zip(weights, ref_grads):
        assert ref.abs().sum() > 0
        torch.testing.assert_close(w.grad, ref, rtol=1e-4, atol=1e-9)
    for moe in student.get_moe_layers().values():
        g = moe.router.proj.weight.grad
        assert g is None or g.abs().sum() == 0


def test_teacher_route_distillation_does_not_reach_the_teacher_router():
    """Eq. S1 with distillation on: the teacher router's gradient is grad(L_task + lambda_load sum_i L_load(p_t^i))
    alone. The p_t-gated MoE outputs of blocks 8 and 10 feed the student routers of blocks 10 and 12; the KL on
    those routers must not flow back through them (nor into the student's blocks: Eq. S2 trains the router)."""
    torch.manual_seed(0)
    student = tiny_student(router_noise_std=0.)
    _, out, reference, ref_logits, y, p_t, weights = _teacher_route_step(
        student, teacher_load_weight=0.005, distill_weight=5.0)
    assert out['distill_loss'].item() > 0
    load = 0.
    for pt in p_t.values():
        imp = pt.reshape(-1, pt.shape[-1]).mean(0)
        load = load + imp.var(unbiased=False) / imp.mean() ** 2
    backbone = reference.blocks[2].attn.qkv.weight
    ref_grads = torch.autograd.grad(F.cross_entropy(ref_logits, y) + 0.005 * load, weights + [backbone])
    for w, ref in zip(weights, ref_grads):
        torch.testing.assert_close(w.grad, ref, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(student.blocks[2].attn.qkv.weight.grad, ref_grads[-1], rtol=1e-4, atol=1e-9)


def test_teacher_route_loss_follows_eq_s1_to_s3():
    """L = L_task + lambda_load sum_i L_load(p_t^i) + lambda_distill sum_i KL(p_t^i || p^i): both sums over
    layers (Eq. S1, S2), no entropy term; the student router gets only the distillation gradient."""
    torch.manual_seed(3)
    student = tiny_student(router_noise_std=0.)
    task = TGRTask(student, tiny_teacher(), mode='teacher_route', teacher_load_weight=0.01, distill_weight=2.0)
    task.train()
    x, y = _batch()
    out = task(x, y)
    p_t = _hand_teacher_probs(task, x)
    load, kl = 0., 0.
    for s, pt in p_t.items():
        pt64 = pt.detach().double().reshape(-1, pt.shape[-1])
        p64 = student.routing_infos()[s].probs.detach().double().reshape(-1, pt.shape[-1])
        imp = pt64.mean(0)
        load += float(imp.var(unbiased=False) / imp.mean() ** 2)
        kl += float((pt64 * (pt64.log() - p64.log())).sum(-1).mean())
    expected = F.cross_entropy(out['output'], y).item() + 0.01 * load + 2.0 * kl
    assert out['loss'].item() == pytest.approx(expected, rel=1e-5)
    assert out['distill_loss'].item() == pytest.approx(kl, rel=1e-5)
    router = student.blocks[7].mlp.router.proj.weight
    kl7 = F.kl_div(student.routing_infos()[7].probs.log().reshape(-1, 16), p_t[7].detach().reshape(-1, 16),
                   reduction='batchmean')
    g_kl, = torch.autograd.grad(kl7, router, retain_graph=True)
    out['loss'].backward()
    torch.testing.assert_close(router.grad, 2.0 * g_kl, rtol=1e-4, atol=1e-9)


def test_distill_only_mode_detaches_gates():
    student = tiny_student(router_noise_std=0.)
    task = TGRTask(student, tiny_teacher(), mode='distill_only', distill_weight=0.)
    task.train()
    out = task(*_batch())
    out['loss'].backward()
    for moe in student.get_moe_layers().values():  # no task or load-loss gradient reaches the router
        g = moe.router.proj.weight.grad
        assert g is None or g.abs().sum() == 0


def test_vmoe_task_adds_aux_loss():
    model = tiny_student('vmoe_deit_tiny')
    task = VMoETask(model)
    task.train()
    out = task(*_batch())
    infos = model.routing_infos()  # V-MoE's two losses, 0.005 each: importance (clean softmax) and noise-based load
    aux = sum(infos[i].load_loss + infos[i].noisy_load_loss for i in (7, 9, 11)) * 0.005
    assert all(infos[i].noisy_load_loss > 0 for i in (7, 9, 11))
    assert out['loss'].item() == pytest.approx((out['task_loss'] + aux).item(), rel=1e-5)
    with pytest.raises(TypeError, match='not a timm_tgr MoE model'):
        VMoETask(timm.create_model('deit_tiny_patch16_224', img_size=32))


def test_bad_inputs():
    with pytest.raises(ValueError, match='unknown teacher'):
        TGRTask(tiny_student(), 'no_such_teacher_model')
    with pytest.raises(ValueError, match='token-grid mismatch'):
        TGRTask(tiny_student(), tiny_teacher(img_size=48))
    with pytest.raises(ValueError, match='outside the teacher'):
        TGRTask(tiny_student(), tiny_teacher(), layer_map={7: 3, 9: 5, 11: 20})
    with pytest.raises(ValueError, match='exactly the student MoE blocks'):
        TGRTask(tiny_student(), tiny_teacher(), layer_map={7: 3})
    with pytest.raises(ValueError, match='outside the teacher'):
        TGRTask(tiny_student(), tiny_teacher(depth=6))
    with pytest.raises(ValueError, match='needs total_steps'):
        TGRTask(tiny_student(), tiny_teacher(), schedule='first')
    with pytest.raises(ValueError, match='mode'):
        TGRTask(tiny_student(), tiny_teacher(), mode='teacher')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        build_teacher('deit3_small_patch16_224', checkpoint='/nonexistent.pth')
    # loss weights are checked before the teacher is built (which may download it)
    for kwargs, match in ((dict(distill_weight=-5.), 'distill_weight must be >= 0 and finite'),
                          (dict(teacher_load_weight=float('nan')), 'teacher_load_weight must be >= 0 and finite'),
                          (dict(teacher_entropy_weight=float('inf')), 'teacher_entropy_weight must be >= 0')):
        with pytest.raises(ValueError, match=match):
            TGRTask(tiny_student(), 'no_such_teacher_model', **kwargs)
