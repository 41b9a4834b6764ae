"""Registered V-MoE / TGR-MoE DeiT models: timm integration, parameter counts, bad inputs."""
import pytest
import timm
import torch

from timm_tgr import SparseMoE, VMoEVisionTransformer, VMoEVisionTransformerDistilled

PLAIN = ['vmoe_deit_tiny', 'vmoe_deit_small', 'vmoe_deit_base',
         'tgr_moe_deit_tiny', 'tgr_moe_deit_small', 'tgr_moe_deit_base']
ALL = PLAIN + [n + '_distilled' for n in PLAIN]
SIZES = {'tiny': (192, 16), 'small': (384, 8), 'base': (768, 8)}
DENSE = {'tiny': 'deit_tiny_patch16_224', 'small': 'deit_small_patch16_224', 'base': 'deit_base_patch16_224'}
# Table S2 of the TGR-MoE supplement, trainable student parameters (distilled DeiT layout)
TABLE_S2 = {'tiny': 19_234_256, 'small': 47_258_576, 'base': 186_527_696}


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_registered_names():
    assert timm.list_models('vmoe_deit_*') == sorted(n for n in ALL if n.startswith('vmoe'))
    assert timm.list_models('tgr_moe_deit_*') == sorted(n for n in ALL if n.startswith('tgr'))


@pytest.mark.parametrize('name', ALL)
def test_parameter_counts(name):
    size = name.split('_')[-2] if name.endswith('distilled') else name.split('_')[-1]
    dim, experts = SIZES[size]
    model = timm.create_model(name, device='meta')
    distilled = name.endswith('_distilled')
    dense_name = DENSE[size].replace('_patch', '_distilled_patch') if distilled else DENSE[size]
    dense = _count(timm.create_model(dense_name, device='meta'))
    mlp = dim * 4 * dim + 4 * dim + 4 * dim * dim + dim
    expected = dense + 3 * (experts - 1) * mlp + 3 * dim * experts
    assert _count(model) == expected
    if distilled:
        assert _count(model) == TABLE_S2[size]
    assert isinstance(model, VMoEVisionTransformerDistilled if distilled else VMoEVisionTransformer)
    assert sorted(model.get_moe_layers()) == [7, 9, 11]
    assert all(m.num_experts == experts and m.top_k == 1 for m in model.get_moe_layers().values())
    assert all(m.router.proj.bias is None for m in model.get_moe_layers().values())


BASELINES = [f'{family}_moe_deit_{size}' for family in ('soft', 'ec') for size in ('tiny', 'small')]


@pytest.mark.parametrize('name', ALL + BASELINES)
def test_forward_backward_small_image(name):
    """Every MoE family at 32x32: logits, a router gradient from the task and aux losses, routing records sized
    [B, N, E] / [B, N, K] / [E]."""
    model = timm.create_model(name, img_size=32, num_classes=7)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    (out.logsumexp(-1).mean() + model.moe_aux_loss()).backward()
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    assert sorted(model.routing_infos()) == sorted(model.get_moe_layers())
    for i, info in model.routing_infos().items():
        moe = model.blocks[i].mlp
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moe.router.parameters())
        assert info.probs.shape == (2, tokens, moe.num_experts) and info.expert_index.shape == (2, tokens, 1)
        assert info.kept.shape == (2, tokens, 1) and info.expert_counts.shape == (moe.num_experts,)


def test_create_model_kwargs():
    m = timm.create_model('vmoe_deit_small', num_classes=100, num_experts=16, top_k=2, img_size=64,
                          moe_layers=(3, 11), capacity_factor=1.25, eval_capacity_factor=2.0,
                          router_noise_std='1/E', batch_prioritized_routing=True, in_chans=1,
                          drop_path_rate=0.1, capacity_group='batch', z_loss_weight=1e-3)
    moes = m.get_moe_layers()
    assert sorted(moes) == [3, 11]
    moe = moes[3]
    assert (moe.num_experts, moe.top_k, moe.capacity_factor, moe.eval_capacity_factor) == (16, 2, 1.25, 2.0)
    assert moe.router.noise_std == 1 / 16 and moe.batch_prioritized_routing and moe.capacity_group == 'batch'
    assert m.num_classes == 100 and m.in_chans == 1
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 100)
    assert m.routing_infos()[11].expert_index.shape[-1] == 2
    assert m.moe_aux_loss() > 0  # includes the z-loss


def test_distilled_behaves_like_timm_deit():
    m = timm.create_model('vmoe_deit_tiny_distilled', img_size=32, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    m.train()
    assert m(x).shape == (2, 5)
    m.set_distilled_training(True)
    out, out_dist = m(x)
    assert out.shape == out_dist.shape == (2, 5)
    m.eval()
    assert m(x).shape == (2, 5)
    assert m.num_prefix_tokens == 2
    head, head_dist = m.get_classifier()
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)


def test_timm_conventions():
    m = timm.create_model('vmoe_deit_tiny', img_size=32, num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    final, inter = m.forward_intermediates(x, indices=[7, 11], output_fmt='NLC')
    assert len(inter) == 2 and inter[0].shape == (2, 4, 192)
    assert m.forward_head(m.forward_features(x)).shape == (2, 4)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, 192)
    assert {'pos_embed', 'cls_token'} <= m.no_weight_decay()
    assert 'blocks' in m.group_matcher()
    m.reset_classifier(0)
    assert m(x).shape == (2, 192)
    assert m.pretrained_cfg['paper_ids'] == 'arXiv:2106.05974'
    assert timm.create_model('tgr_moe_deit_tiny', img_size=32).pretrained_cfg['paper_ids'] == 'arXiv:2604.21330'
    # the default tag is the upcycled one (timm's dense DeiT on the Hub), the only weights there are
    assert m.pretrained_cfg['tag'] == 'fb_in1k_upcycled'
    assert m.pretrained_cfg['hf_hub_id'] == 'timm/deit_tiny_patch16_224.fb_in1k'


def test_features_only():
    m = timm.create_model('vmoe_deit_tiny', img_size=32, features_only=True, out_indices=(7, 11))
    feats = m(torch.randn(2, 3, 32, 32))
    assert [f.shape for f in feats] == [(2, 192, 2, 2)] * 2


def test_grad_checkpointing_keeps_aux_loss_gradient():
    torch.manual_seed(0)
    ref = timm.create_model('vmoe_deit_tiny', img_size=32, num_classes=3, router_noise_std=0.)
    ckpt = timm.create_model('vmoe_deit_tiny', img_size=32, num_classes=3, router_noise_std=0.)
    ckpt.load_state_dict(ref.state_dict())
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    for m in (ref, ckpt):
        m.train()
        (m(x).sum() + 100 * m.moe_aux_loss()).backward()
    g_ref = ref.blocks[7].mlp.router.proj.weight.grad
    g_ckpt = ckpt.blocks[7].mlp.router.proj.weight.grad
    torch.testing.assert_close(g_ckpt, g_ref)


def test_sparse_moe_is_block_mlp():
    m = timm.create_model('vmoe_deit_tiny', img_size=32)
    kinds = [type(b.mlp).__name__ for b in m.blocks]
    assert [i for i, k in enumerate(kinds) if k == 'SparseMoE'] == [7, 9, 11]
    assert isinstance(m.blocks[7].mlp, SparseMoE)


@pytest.mark.parametrize('kwargs, match', [
    (dict(top_k=17), 'top_k=17'),
    (dict(capacity_factor=0), 'capacity_factor must be > 0'),
    (dict(moe_layers=(7, 12)), 'moe_layers'),
    (dict(moe_layers=(-1,)), 'moe_layers'),
    (dict(moe_layers=()), 'moe_layers'),
    (dict(moe_layers=(3, 3)), 'moe_layers'),
    (dict(moe_layers=12), r'moe_layers=12 is invalid for a model of depth 12'),
    (dict(moe_layers='ten'), "moe_layers='ten' is not a list of block indices"),
    (dict(moe_layers=(7.5,)), r'moe_layers=\(7.5,\) holds non-integer entries'),
    (dict(moe_layers=True), 'moe_layers=True is not a list of block indices'),
    (dict(capacity_factor=float('inf')), 'capacity_factor must be > 0 and finite'),
    (dict(eval_capacity_factor=float('inf')), 'eval_capacity_factor must be > 0 and finite'),
    (dict(load_loss_weight=float('nan')), 'load_loss_weight must be >= 0 and finite'),
    (dict(load_loss_weight=-0.1), 'load_loss_weight must be >= 0'),
    (dict(router_noise_std=float('nan')), 'router_noise_std must be >= 0 and finite'),
    (dict(z_loss_weight=float('inf')), 'z_loss_weight must be >= 0 and finite'),
    (dict(top_k=1.5), 'top_k must be an integer'),
    (dict(num_experts=4.0), 'num_experts must be >= 1 and an integer'),
])
def test_bad_model_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('vmoe_deit_tiny', img_size=32, **kwargs)


@pytest.mark.parametrize('moe_layers, blocks', [
    (11, [11]),  # one int is one block
    ('10', [10]),  # a string is comma-separated indices, never the characters '1' and '0'
    ('7, 9,11', [7, 9, 11]),
    ([3, 1], [1, 3]),
])
def test_moe_layers_forms(moe_layers, blocks):
    m = timm.create_model('vmoe_deit_tiny', img_size=32, patch_size=16, embed_dim=32, num_heads=2,
                          moe_layers=moe_layers)
    kinds = [type(b.mlp).__name__ for b in m.blocks]
    assert [i for i, k in enumerate(kinds) if k == 'SparseMoE'] == blocks
    assert sorted(m.get_moe_layers()) == blocks


@pytest.mark.parametrize('name', ['vmoe_deit_tiny', 'vmoe_deit_tiny_distilled', 'soft_moe_deit_tiny',
                                  'ec_moe_deit_tiny'])
@pytest.mark.parametrize('training', [True, False])
def test_empty_batch_gives_an_empty_output_like_timm(name, training):
    kw = dict(img_size=16, patch_size=4, embed_dim=32, num_heads=2, num_classes=3)
    dense = timm.create_model('deit_tiny_patch16_224', **kw).train(training)
    model = timm.create_model(name, **kw).train(training)
    x = torch.zeros(0, 3, 16, 16)
    out, ref = model(x), dense(x)
    out = out[0] if isinstance(out, tuple) else out  # the distilled layout in training returns two heads
    assert out.shape == ref.shape == (0, 3)


def test_bad_images():
    m = timm.create_model('vmoe_deit_tiny', img_size=32)
    with pytest.raises(ValueError, match=r'img_size=\(64, 64\)'):
        m(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match='in_chans=1'):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        m(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='img_size'):
        m.forward_intermediates(torch.randn(1, 3, 48, 48))


def test_dynamic_img_size():
    m = timm.create_model('vmoe_deit_tiny', img_size=32, dynamic_img_size=True, num_classes=2)
    assert m(torch.randn(1, 3, 48, 48)).shape == (1, 2)
    assert m.routing_infos()[7].probs.shape[1] == 1 + 9


@pytest.mark.slow
def test_torch_compile_fullgraph():
    m = timm.create_model('vmoe_deit_tiny', img_size=32, patch_size=8, depth=4, moe_layers=(1, 3),
                          num_classes=10, batch_prioritized_routing=True)
    m.train()
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(4, 3, 32, 32)
    out = compiled(x)
    loss = out.sum() + m.moe_aux_loss()
    loss.backward()
    assert m.blocks[1].mlp.router.proj.weight.grad.abs().sum() > 0
    # compiled eager equality with the noise off
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)


def _layout(**kwargs):
    with torch.device('meta'):
        model = timm.create_model('vmoe_deit_tiny', **{**dict(img_size=32, patch_size=8, depth=4, moe_layers=(1, 3)),
                                                       **kwargs})
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('kwarg, value', [
    ('drop_rate', 0.1), ('drop_path_rate', 0.1), ('attn_drop_rate', 0.1), ('proj_drop_rate', 0.1),
    ('pos_drop_rate', 0.1), ('patch_drop_rate', 0.1), ('tgr_distill_weight', 2.0),
    ('embed_dim', 96), ('num_experts', 8), ('depth', 6), ('num_classes', 3), ('mlp_ratio', 2.),
])
def test_a_kwarg_is_architecture_where_it_can_change_the_weights(kwarg, value):
    """The one role of a create_model kwarg (config.json, resume and fine-tuning checks read it): one that changes
    the weights' layout is architecture; dropout rates and the tgr_* training options change nothing there."""
    from timm_tgr.models._factory import is_architecture_kwarg
    changes = _layout(**{kwarg: value}) != _layout()
    assert changes == is_architecture_kwarg(kwarg)
