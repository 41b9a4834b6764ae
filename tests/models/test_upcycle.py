"""Sparse upcycling of dense DeiT weights into V-MoE / TGR-MoE DeiT (timm_tgr.models.upcycle), all offline."""
import argparse

import pytest
import safetensors.torch
import timm
import torch

from test_export import REPO, _hub_cache, _offline  # an HF cache laid out as huggingface_hub does
from timm_tgr.models import HF_HUB_ORG, UPCYCLED_TAG, upcycle_dense_state_dict, upcycle_from

# eval logits of the upcycled model equal the dense model's to TOL * max|dense logit|: the gates are
# 1/E * (1 + O(router logit spread = 1e-5)); measured 0.7e-5 to 1.2e-5 of max|logit| (docs/upcycling.md)
TOL = 1e-4
TINY = 'deit_tiny_patch16_224'
# the Fashion-MNIST quickstart's width on 28x28 images: 17 tokens, E=8
SMALL_KW = dict(img_size=28, patch_size=7, embed_dim=64, num_heads=2, in_chans=1, num_classes=10)


def _dense(name=TINY, perturb=True, **kw):
    """A dense DeiT with random weights; LayerNorm affine far from (1, 0) as in trained weights."""
    model = timm.create_model(name, **kw).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if perturb and 'norm' in n:
                p.copy_(0.5 + torch.rand(p.shape, generator=g) if n.endswith('weight') else
                        0.5 * torch.randn(p.shape, generator=g))
    return model


def _logits(model, shape=(2, 3, 224, 224)):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def _assert_close(out, ref):
    err = (out - ref).abs().max()
    assert err <= TOL * ref.abs().max(), f'max abs diff {err:.3g} vs max |logit| {ref.abs().max():.3g}'


def test_filter_copies_the_dense_mlp_into_every_expert():
    dense = _dense().state_dict()
    model = timm.create_model('vmoe_deit_tiny')
    sd = upcycle_dense_state_dict(dense, model)
    for i in range(12):
        p = f'blocks.{i}.mlp.'
        if i not in (7, 9, 11):
            assert torch.equal(sd[p + 'fc1.weight'], dense[p + 'fc1.weight'])
            continue
        assert p + 'fc1.weight' not in sd and p + 'fc2.bias' not in sd
        for e in range(16):  # every expert: fc1 as is, fc2 times E/K = 16
            assert torch.equal(sd[p + 'experts.fc1_weight'][e], dense[p + 'fc1.weight'])
            assert torch.equal(sd[p + 'experts.fc1_bias'][e], dense[p + 'fc1.bias'])
            assert torch.equal(sd[p + 'experts.fc2_weight'][e], dense[p + 'fc2.weight'] * 16)
            assert torch.equal(sd[p + 'experts.fc2_bias'][e], dense[p + 'fc2.bias'] * 16)
        w = sd[p + 'router.proj.weight'].double()
        gamma, beta = dense[f'blocks.{i}.norm2.weight'].double(), dense[f'blocks.{i}.norm2.bias'].double()
        assert w.shape == (16, 192)
        cos = (w @ beta) / (w.norm(dim=1) * beta.norm())
        assert cos.abs().max() < 1e-6  # orthogonal to norm2's bias (to fp32 rounding): no constant logit offset
        # per-token logit std of each row on unit-variance features: |w * gamma| = 1e-5
        torch.testing.assert_close((w * gamma).norm(dim=1), torch.full((16,), 1e-5, dtype=torch.float64))
    model.load_state_dict(sd)  # strict: nothing missing or left over


@pytest.mark.parametrize('name,dense_name,kw,shape', [
    ('vmoe_deit_tiny', TINY, {}, (2, 3, 224, 224)),
    ('tgr_moe_deit_tiny_distilled', 'deit_tiny_distilled_patch16_224', {}, (2, 3, 224, 224)),
    ('tgr_moe_deit_tiny', TINY, dict(SMALL_KW, num_experts=8), (16, 1, 28, 28)),
])
def test_eval_equals_dense(tmp_path, name, dense_name, kw, shape):
    dense_kw = {k: v for k, v in kw.items() if k != 'num_experts'}
    dense = _dense(dense_name, **dense_kw)
    path = tmp_path / 'dense.safetensors'
    safetensors.torch.save_file(dense.state_dict(), str(path))
    model = timm.create_model(f'{name}.{UPCYCLED_TAG}', pretrained=True, **kw, pretrained_cfg_overlay=dict(
        file=str(path), num_classes=kw.get('num_classes', 1000)))
    E = model.num_experts
    assert all(m.eval_capacity_factor == E for m in model.get_moe_layers().values())  # C = S: nothing dropped
    _assert_close(_logits(model, shape), _logits(dense, shape))
    assert all(float(info.dropped_fraction) == 0 for info in model.routing_infos().values())
    assert max(int((info.expert_counts > 0).sum()) for info in model.routing_infos().values()) > E // 2

    # the V-MoE default eval capacity (1.05) drops tokens, and the model is no longer the dense one
    model = upcycle_from(path, timm.create_model(name, **kw))
    assert model.get_moe_layers()[7].eval_capacity_factor is None
    diff = (_logits(model, shape) - _logits(dense, shape)).abs().max()
    assert diff > TOL * _logits(dense, shape).abs().max()
    assert all(float(info.dropped_fraction) > 0 for info in model.routing_infos().values())


def test_hub_tag_from_offline_hf_cache(tmp_path, monkeypatch):
    dense = _dense()
    folder = tmp_path / 'deit'
    folder.mkdir()
    safetensors.torch.save_file(dense.state_dict(), str(folder / 'model.safetensors'))
    _hub_cache(tmp_path, monkeypatch, 'timm/deit_tiny_patch16_224.fb_in1k', folder)

    model = timm.create_model('vmoe_deit_tiny.fb_in1k_upcycled', pretrained=True)
    assert model.pretrained_cfg['hf_hub_id'] == 'timm/deit_tiny_patch16_224.fb_in1k'
    assert model.pretrained_cfg['crop_pct'] == .9  # the dense weights' data config
    _assert_close(_logits(model), _logits(dense))

    # another image size: timm's ViT filter resamples pos_embed first, as for the dense model itself
    model = timm.create_model('tgr_moe_deit_tiny.fb_in1k_upcycled', pretrained=True, img_size=64)
    dense64 = timm.create_model('deit_tiny_patch16_224.fb_in1k', pretrained=True, img_size=64)
    _assert_close(_logits(model, (2, 3, 64, 64)), _logits(dense64, (2, 3, 64, 64)))

    # another num_classes: timm's loader drops the head, everything before it is the dense model
    model = timm.create_model('vmoe_deit_tiny.fb_in1k_upcycled', pretrained=True, num_classes=5)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        _assert_close(model.eval().forward_head(model.forward_features(x), pre_logits=True),
                      dense.forward_head(dense.forward_features(x), pre_logits=True))

    # a timm model name as the source of upcycle_from goes through the same cache
    target = upcycle_from('deit_tiny_patch16_224.fb_in1k', timm.create_model('vmoe_deit_tiny', num_classes=5))
    for k, v in model.state_dict().items():
        if not k.startswith('head.'):
            assert torch.equal(target.state_dict()[k], v), k


def test_hub_tag_not_cached_says_how(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path / 'empty_cache')
    with pytest.raises(RuntimeError, match='dense weights that vmoe_deit_small.fb_in1k_upcycled upcycles') as e:
        timm.create_model('vmoe_deit_small.fb_in1k_upcycled', pretrained=True)
    assert 'timm/deit_small_patch16_224.fb_in1k' in str(e.value) and 'pretrained_cfg_overlay=dict(file=' in str(e.value)


def test_default_tag_is_the_upcycled_one():
    """Until trained weights are published, every architecture's first (default) tag is the upcycled one."""
    names = timm.list_models(pretrained=True, filter='*moe_deit*')
    arches = [n for n in timm.list_models('*moe_deit*') if n.startswith(('vmoe_', 'tgr_moe_'))]
    assert len(arches) == 12 and names == sorted(f'{a}.{UPCYCLED_TAG}' for a in arches)
    for arch in arches:
        cfg = timm.models.get_pretrained_cfg(arch)
        size = arch.split('_deit_')[1].split('_')[0]
        dense = f"deit_{size}{'_distilled' if arch.endswith('_distilled') else ''}_patch16_224"
        assert cfg.tag == UPCYCLED_TAG and timm.is_model_pretrained(arch)
        assert cfg.hf_hub_id == f'timm/{dense}.fb_in1k'  # a repo that exists: timm's dense DeiT
    ours = [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('timm_tgr.')]
    for name in ours:  # no cfg points at a Hub repo of ours (nothing is published there)
        for cfg in timm.models.get_arch_pretrained_cfgs(name).values():
            assert not (cfg.hf_hub_id or '').startswith(HF_HUB_ORG), (name, cfg.hf_hub_id)
    # from scratch (no weights) the untagged name keeps V-MoE's capacity; the tag named explicitly sets E/K
    assert timm.create_model('vmoe_deit_small', img_size=32).get_moe_layers()[7].eval_capacity_factor is None
    assert timm.create_model('vmoe_deit_small.fb_in1k_upcycled', img_size=32).get_moe_layers()[7].eval_capacity_factor \
        == 8
    m = timm.create_model('vmoe_deit_small.fb_in1k_upcycled', img_size=32, eval_capacity_factor=2.)
    assert m.get_moe_layers()[7].eval_capacity_factor == 2.  # an explicit eval capacity wins


def test_untagged_name_loads_upcycled_offline(tmp_path, monkeypatch, caplog):
    """timm.create_model('tgr_moe_deit_tiny', pretrained=True) from a pre-filled HF cache with HF_HUB_OFFLINE=1, and
    the same through torch.hub.load and a local file: the dense DeiT upcycled, said in one log line."""
    dense = _dense()
    folder = tmp_path / 'deit'
    folder.mkdir()
    safetensors.torch.save_file(dense.state_dict(), str(folder / 'model.safetensors'))
    _hub_cache(tmp_path, monkeypatch, 'timm/deit_tiny_patch16_224.fb_in1k', folder)

    def loaded_lines():
        lines = [r.getMessage() for r in caplog.records if 'upcycled into' in r.getMessage()]
        caplog.clear()
        return lines

    with caplog.at_level('WARNING', logger='timm_tgr'):
        model = timm.create_model('tgr_moe_deit_tiny', pretrained=True)
        lines = loaded_lines()
        assert len(lines) == 1, lines
        assert 'Hugging Face Hub repo timm/deit_tiny_patch16_224.fb_in1k' in lines[0]
        assert 'routers start near uniform' in lines[0] and 'fine-tune, with TGR, before relying on routing' in lines[0]
        assert "router_noise_std='1/E'" in lines[0]  # the training default the upcycled weights got
        assert model.pretrained_cfg['tag'] == UPCYCLED_TAG
        assert all(m.eval_capacity_factor == 16 for m in model.get_moe_layers().values())
        _assert_close(_logits(model), _logits(dense))
        assert all(float(info.dropped_fraction) == 0 for info in model.routing_infos().values())

        hub = torch.hub.load(str(REPO), 'tgr_moe_deit_tiny', source='local', pretrained=True)
        assert len(loaded_lines()) == 1
        assert torch.equal(_logits(hub), _logits(model))

        # a local copy of the dense weights (no Hub at all) under the untagged name
        local = timm.create_model('vmoe_deit_tiny', pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors')))
        assert 'file ' + str(folder / 'model.safetensors') in loaded_lines()[0]
        assert torch.equal(_logits(local), _logits(model))

        # trained MoE weights in a file under the untagged name are not upcycled: loaded as they are, no line,
        # and the model keeps its own capacity settings
        moe_file = tmp_path / 'moe.safetensors'
        safetensors.torch.save_file(model.state_dict(), str(moe_file))
        trained = timm.create_model('vmoe_deit_tiny', pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(moe_file)))
        assert loaded_lines() == []
        assert trained.get_moe_layers()[7].eval_capacity_factor is None
        assert torch.equal(trained.state_dict()['blocks.7.mlp.router.proj.weight'],
                           model.state_dict()['blocks.7.mlp.router.proj.weight'])


def test_fine_tuning_defaults_of_upcycled_weights(tmp_path, monkeypatch):
    """UPCYCLED_FINETUNE_DEFAULTS (the one line the fine-tuning study sets) reaches every MoE layer of upcycled
    weights; kwargs given to create_model win."""
    from timm_tgr.models import vmoe_deit
    dense = _dense(**SMALL_KW)
    path = tmp_path / 'dense.safetensors'
    safetensors.torch.save_file(dense.state_dict(), str(path))
    kw = dict(SMALL_KW, num_experts=8, pretrained=True,
              pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    model = timm.create_model('tgr_moe_deit_tiny', **kw)  # the study's choice: V-MoE's code's noise 1/E
    for m in model.get_moe_layers().values():
        assert m.router.noise_std == 1 / 8 and m.capacity_factor == 1.05 and m.eval_capacity_factor == 8
    monkeypatch.setattr(vmoe_deit, 'UPCYCLED_FINETUNE_DEFAULTS', {'router_noise_std': 1.0})
    model = timm.create_model('tgr_moe_deit_tiny', **kw)
    assert all(m.router.noise_std == 1.0 and m.capacity_factor == 1.05 for m in model.get_moe_layers().values())
    monkeypatch.setattr(vmoe_deit, 'UPCYCLED_FINETUNE_DEFAULTS',
                        dict(router_noise_std='1/E', capacity_factor='dropless'))
    model = timm.create_model('tgr_moe_deit_tiny', **kw)
    for m in model.get_moe_layers().values():
        assert m.router.noise_std == 1 / 8 and m.capacity_factor == 'dropless' and m.eval_capacity_factor == 8
    model = timm.create_model('tgr_moe_deit_tiny', router_noise_std=0.5, capacity_factor=1.25, **kw)
    assert all(m.router.noise_std == 0.5 and m.capacity_factor == 1.25 for m in model.get_moe_layers().values())
    # from scratch, nothing changes: the layer's own defaults (V-MoE's code: noise 1/E)
    model = timm.create_model('tgr_moe_deit_tiny', **dict(SMALL_KW, num_experts=8))
    assert all(m.router.noise_std == 1 / 8 and m.capacity_factor == 1.05 for m in model.get_moe_layers().values())


def test_upcycle_from_files(tmp_path):
    dense = _dense(**SMALL_KW).state_dict()
    model_kw = dict(SMALL_KW, num_experts=8)
    ref = upcycle_dense_state_dict(dense, timm.create_model('vmoe_deit_tiny', **model_kw))
    safetensors.torch.save_file(dense, str(tmp_path / 'w.safetensors'))
    torch.save(dense, tmp_path / 'w.pth')
    # a train_tgr.py / timm checkpoint of a DDP-wrapped dense model
    ckpt = {'state_dict': {f'module.{k}': v for k, v in dense.items()}, 'epoch': 3,
            'args': argparse.Namespace(model=TINY)}
    torch.save(ckpt, tmp_path / 'last.pth.tar')
    for f in ('w.safetensors', 'w.pth', 'last.pth.tar'):
        model = upcycle_from(tmp_path / f, timm.create_model('vmoe_deit_tiny', **model_kw))
        for k, v in model.state_dict().items():
            assert torch.equal(v, ref[k]), (f, k)
    with pytest.raises(ValueError, match='no EMA weights'):
        upcycle_from(tmp_path / 'last.pth.tar', timm.create_model('vmoe_deit_tiny', **model_kw), ema=True)
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        upcycle_from(tmp_path / 'missing.pth', timm.create_model('vmoe_deit_tiny', **model_kw))
    with pytest.raises(ValueError, match='neither a checkpoint file nor a timm model'):
        upcycle_from('no_such_model', timm.create_model('vmoe_deit_tiny', **model_kw))


def test_upcycle_from_keeps_own_head_when_num_classes_differs(tmp_path):
    dense = _dense(**SMALL_KW)
    path = tmp_path / 'w.safetensors'
    safetensors.torch.save_file(dense.state_dict(), str(path))
    model = timm.create_model('vmoe_deit_tiny', **dict(SMALL_KW, num_classes=3, num_experts=8))
    head = model.head.weight.detach().clone()
    upcycle_from(path, model)
    assert torch.equal(model.head.weight, head)
    assert torch.equal(model.blocks[0].attn.qkv.weight, dense.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize('dense_kw,model_kw,match', [
    (dict(embed_dim=384, num_heads=6), {}, r'width 384 .* width 192: .*vmoe_deit_small.*embed_dim=384'),
    (dict(depth=6), {}, r'depth 6 .* depth 12: create the model with depth=6'),
    (dict(mlp_ratio=2.), {}, r'mlp.fc1.weight is \(96, 48\).* needs \(192, 48\).*mlp_ratio'),
    (dict(class_token=True), dict(distilled=True), r'plain layout but .*distilled DeiT layout'),
])
def test_dense_checkpoint_that_does_not_fit(tmp_path, dense_kw, model_kw, match):
    base = dict(img_size=32, patch_size=8, embed_dim=48, num_heads=2, num_classes=10)
    dense_kw = dict(base, **dense_kw)
    width = 192 if 'embed_dim' in dense_kw and dense_kw['embed_dim'] == 384 else 48
    name = 'vmoe_deit_tiny_distilled' if model_kw.get('distilled') else 'vmoe_deit_tiny'
    kw = dict(base, embed_dim=width, num_heads=3 if width == 192 else 2)
    path = tmp_path / 'w.safetensors'
    safetensors.torch.save_file(timm.create_model(TINY, **dense_kw).state_dict(), str(path))
    with pytest.raises(ValueError, match=match):
        upcycle_from(path, timm.create_model(name, **kw))
    with pytest.raises(ValueError, match=match):  # the same through timm's pretrained loading
        timm.create_model(f'{name}.{UPCYCLED_TAG}', pretrained=True, **kw,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=10))


def test_distilled_weights_into_plain_model(tmp_path):
    dense = timm.create_model('deit_tiny_distilled_patch16_224', img_size=32, patch_size=8, embed_dim=48,
                              num_heads=2, num_classes=10)
    with pytest.raises(ValueError, match=r'distilled DeiT layout .* plain layout: upcycle it into a \*_distilled'):
        upcycle_dense_state_dict(dense.state_dict(), timm.create_model(
            'vmoe_deit_tiny', img_size=32, patch_size=8, embed_dim=48, num_heads=2, num_classes=10))


def test_soft_moe_is_refused():
    dense = timm.create_model(TINY, img_size=32, patch_size=8, embed_dim=48, num_heads=2)
    with pytest.raises(ValueError, match='SoftMoE; upcycling builds top-K SparseMoE experts only'):
        upcycle_dense_state_dict(dense.state_dict(), timm.create_model(
            'soft_moe_deit_tiny', img_size=32, patch_size=8, embed_dim=48, num_heads=2))


def test_fine_tuning_step_from_upcycled():
    dense = _dense(**SMALL_KW)
    model = timm.create_model('tgr_moe_deit_tiny', **dict(SMALL_KW, num_experts=8))
    model.load_state_dict(upcycle_dense_state_dict(dense.state_dict(), model))
    model.train()
    out = model(torch.randn(8, 1, 28, 28))
    (out.logsumexp(-1).mean() + model.moe_aux_loss()).backward()
    for moe in model.get_moe_layers().values():
        assert moe.router.proj.weight.grad.abs().sum() > 0
        # router noise (std 1.0) spreads the identical experts' tokens: several experts get gradients
        assert (moe.experts.fc1_weight.grad.flatten(1).abs().sum(1) > 0).sum() > 1


DEIT3_KW = dict(img_size=16, patch_size=4, embed_dim=32, num_heads=2, num_classes=3)


def _deit3(tmp_path, **kw):
    """A DeiT-III (layer scale, position embedding without the class token) with trained-looking layer scales."""
    dense = _dense('deit3_small_patch16_224', **dict(DEIT3_KW, **kw))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for n, p in dense.named_parameters():
            if n.endswith('.gamma'):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    path = tmp_path / 'deit3.safetensors'
    safetensors.torch.save_file(dense.state_dict(), str(path))
    return dense, path


def test_deit3_into_a_plain_model_names_the_kwargs_and_changes_nothing(tmp_path):
    _, path = _deit3(tmp_path)
    model = timm.create_model('vmoe_deit_tiny', **DEIT3_KW, num_experts=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as e:
        upcycle_from(path, model)
    msg = str(e.value)
    assert 'no_embed_class: checkpoint True, model False' in msg
    assert 'layer scale (init_values): checkpoint True, model False' in msg
    assert '--model-kwargs init_values=1e-06 no_embed_class=True' in msg and 'DeiT-III' in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match='no_embed_class: checkpoint True, model False'):  # timm's pretrained loading
        timm.create_model(f'vmoe_deit_tiny.{UPCYCLED_TAG}', pretrained=True, **DEIT3_KW, num_experts=4,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=3))


def test_deit3_upcycles_into_a_model_with_its_layout(tmp_path):
    """With the kwargs the error names, the upcycled model computes the DeiT-III's function in eval mode."""
    dense, path = _deit3(tmp_path)
    kw = dict(DEIT3_KW, num_experts=4, no_embed_class=True, init_values=1e-6)
    model = upcycle_from(path, timm.create_model('vmoe_deit_tiny', **kw, eval_capacity_factor=4.))
    shape = (4, 3, 16, 16)
    _assert_close(_logits(model, shape), _logits(dense, shape))
    assert torch.equal(model.blocks[7].ls2.gamma, dense.blocks[7].ls2.gamma)  # layer scales from the checkpoint
    model = timm.create_model(f'vmoe_deit_tiny.{UPCYCLED_TAG}', pretrained=True, **kw,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=3))
    _assert_close(_logits(model, shape), _logits(dense, shape))


@pytest.mark.parametrize('dense_kw, model_kw, field, fix', [
    (dict(class_token=False, global_pool='avg'), {}, 'class_token: checkpoint False, model True',
     "class_token=False, global_pool='avg'"),
    (dict(reg_tokens=4), {}, 'reg_tokens: checkpoint 4, model 0', 'reg_tokens=4'),
    (dict(qkv_bias=False), {}, 'qkv_bias: checkpoint False, model True', 'qkv_bias=False'),
    ({}, dict(init_values=1e-5), 'layer scale (init_values): checkpoint False, model True', 'init_values=None'),
    ({}, dict(no_embed_class=True), 'no_embed_class: checkpoint False, model True', 'no_embed_class=False'),
])
def test_layout_fields_are_checked(tmp_path, dense_kw, model_kw, field, fix):
    path = tmp_path / 'w.safetensors'
    safetensors.torch.save_file(timm.create_model(TINY, **DEIT3_KW, **dense_kw).state_dict(), str(path))
    with pytest.raises(ValueError) as e:
        upcycle_from(path, timm.create_model('vmoe_deit_tiny', **DEIT3_KW, num_experts=4, **model_kw))
    assert field in str(e.value) and f'create the model with {fix}' in str(e.value)


def test_other_patch_and_image_size_and_channels_are_resampled(tmp_path, caplog):
    """As timm's pretrained loading: another grid or patch size is resampled, another channel count adapted."""
    _, path = _deit3(tmp_path)
    model = timm.create_model('vmoe_deit_tiny', img_size=24, patch_size=6, embed_dim=32, num_heads=2, in_chans=1,
                              num_classes=3, num_experts=4, no_embed_class=True, init_values=1e-6)
    with caplog.at_level('INFO'):
        upcycle_from(path, model)
    log = caplog.text
    assert 'patch size (4, 4) -> (6, 6)' in log and '16 -> 16 position' not in log and '3 -> 1 input channels' in log


@pytest.mark.parametrize('in_chans', [1, 2])
def test_upcycled_tag_with_other_channels_says_what_happens(tmp_path, caplog, in_chans):
    """RGB dense weights into an upcycled tag with ``in_chans`` 1 or 2: the patch embedding is adapted once, by timm's
    loading (its "Converted input conv ... from 3 to N" line), never twice and never reported as loaded unchanged."""
    from timm.models import adapt_input_conv
    kw = dict(img_size=28, patch_size=7, embed_dim=64, num_heads=2, num_classes=10)
    dense = _dense(**kw)
    path = tmp_path / 'dense.safetensors'
    safetensors.torch.save_file(dense.state_dict(), str(path))
    with caplog.at_level('INFO'):
        model = timm.create_model(f'vmoe_deit_tiny.{UPCYCLED_TAG}', pretrained=True, in_chans=in_chans, num_experts=4,
                                  **kw, pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    expected = adapt_input_conv(in_chans, dense.patch_embed.proj.weight.detach())
    torch.testing.assert_close(model.patch_embed.proj.weight.detach(), expected)
    assert 'already match' not in caplog.text and 'Unable to convert' not in caplog.text
    assert f'from 3 to {in_chans} channel' in caplog.text
