"""The Soft-MoE and Expert-Choice DeiT models: registration, Table-S1 placement, parameter counts, kwargs."""
import math

import pytest
import timm
import torch

from timm_tgr.models.moe_baselines import ExpertChoiceVisionTransformer, SoftMoEVisionTransformer

SOFT = ['soft_moe_deit_tiny', 'soft_moe_deit_small', 'soft_moe_deit_base']
EC = ['ec_moe_deit_tiny', 'ec_moe_deit_small', 'ec_moe_deit_base']
SIZES = {'tiny': (192, 16), 'small': (384, 8), 'base': (768, 8)}


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name, kwargs, match', [
    ('soft_moe_deit_tiny', dict(slots_per_expert=0), 'slots_per_expert must be an integer >= 1'),
    ('soft_moe_deit_tiny', dict(match_top_k=0), 'match_top_k must be >= 1'),
    ('soft_moe_deit_tiny', dict(capacity_factor=1.0), 'capacity_factor'),  # not a Soft-MoE argument
    ('ec_moe_deit_tiny', dict(capacity_factor=0), 'capacity_factor must be > 0'),
    ('ec_moe_deit_tiny', dict(moe_layers=(7, 12)), 'moe_layers'),
])
def test_bad_model_configuration(name, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        timm.create_model(name, img_size=32, device='meta', **kwargs)


# --- models -------------------------------------------------------------------------------------

def test_registered_names():
    assert timm.list_models('soft_moe_deit_*') == sorted(SOFT)
    assert timm.list_models('ec_moe_deit_*') == sorted(EC)


@pytest.mark.parametrize('name', SOFT + EC)
def test_parameter_counts(name):
    size = name.split('_')[-1]
    dim, experts = SIZES[size]
    model = timm.create_model(name, device='meta')
    vmoe = _count(timm.create_model(f'vmoe_deit_{size}', device='meta'))
    moes = model.get_moe_layers()
    assert sorted(moes) == [7, 9, 11] and all(m.num_experts == experts for m in moes.values())
    if name.startswith('soft'):
        assert isinstance(model, SoftMoEVisionTransformer)
        slots = math.ceil(197 / experts)  # 196 patches + class token, top-1 compute
        assert all(m.slots_per_expert == slots for m in moes.values())
        # V-MoE's routers (dim x E) become slot parameters (E*slots x dim) and a scale
        assert _count(model) == vmoe - 3 * dim * experts + 3 * (experts * slots * dim + 1)
    else:
        assert isinstance(model, ExpertChoiceVisionTransformer)
        assert _count(model) == vmoe  # same router and experts as V-MoE
        assert all(m.capacity_factor == 1.0 and m.router.proj.bias is None for m in moes.values())
    assert model.pretrained_cfg['paper_ids'] == ('arXiv:2308.00951' if name.startswith('soft') else 'arXiv:2202.09368')
    assert not model.pretrained_cfg.get('url') and not model.pretrained_cfg.get('hf_hub_id')


def test_model_kwargs():
    m = timm.create_model('ec_moe_deit_tiny', img_size=32, num_classes=3, num_experts=4, moe_layers=(3, 11),
                          capacity_factor=2.0, eval_capacity_factor=1.0, capacity_group='batch',
                          router_noise_std='1/E', z_loss_weight=1e-3)
    moe = m.get_moe_layers()[3]
    assert (moe.num_experts, moe.capacity_factor, moe.eval_capacity_factor, moe.capacity_group) == (4, 2., 1., 'batch')
    assert moe.router.noise_std == 0.25
    m(torch.randn(2, 3, 32, 32))
    assert m.moe_aux_loss() > 0  # the z-loss
    s = timm.create_model('soft_moe_deit_tiny', img_size=64, num_experts=4, slots_per_expert=2, normalize=False)
    assert s.blocks[7].mlp.slots_per_expert == 2 and s.blocks[7].mlp.router.scale is None
    s2 = timm.create_model('soft_moe_deit_tiny', img_size=64, num_experts=4, match_top_k=2)
    assert s2.blocks[7].mlp.slots_per_expert == math.ceil(17 * 2 / 4)
    with pytest.raises(ValueError, match='Soft-MoE has no token-to-expert choice'):
        s.set_routing_override({7: torch.rand(1, 17, 4)})
    s.set_routing_override(None)


def test_soft_moe_model_dynamic_img_size():
    m = timm.create_model('soft_moe_deit_tiny', img_size=32, dynamic_img_size=True, num_classes=2)
    assert m.blocks[7].mlp.slots_per_expert == 1  # sized for 4 patches + class token
    assert m(torch.randn(1, 3, 48, 48)).shape == (1, 2)
    assert m.routing_infos()[7].probs.shape == (1, 10, 16)


# --- StableMoE ----------------------------------------------------------------------------------
