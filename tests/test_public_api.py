"""The package's public names: each one importable from ``timm_tgr`` is the object its home module defines."""
import importlib
import inspect

import pytest

import timm
import timm_tgr

# public name -> the module that defines it
PUBLIC = {
    'ExpertChoiceMoE': 'timm_tgr.layers.expert_choice', 'GroupedExperts': 'timm_tgr.layers.experts',
    'RouterOutput': 'timm_tgr.layers.router', 'TopKRouter': 'timm_tgr.layers.router',
    'RoutingInfo': 'timm_tgr.layers.moe_base', 'SparseMoE': 'timm_tgr.layers.sparse_moe',
    'SoftMoE': 'timm_tgr.layers.soft_moe', 'SoftMoERouter': 'timm_tgr.layers.soft_moe',
    'soft_moe_slots': 'timm_tgr.layers.soft_moe', 'assign_slots': 'timm_tgr.layers.dispatch',
    'expert_capacity': 'timm_tgr.layers.dispatch', 'expert_choice_capacity': 'timm_tgr.layers.expert_choice',
    'ExpertChoiceVisionTransformer': 'timm_tgr.models.moe_baselines',
    'SoftMoEVisionTransformer': 'timm_tgr.models.moe_baselines',
    'MoEBlock': 'timm_tgr.models._moe_vit', 'PAPER_MOE_LAYERS': 'timm_tgr.models._moe_vit',
    'VMoEVisionTransformer': 'timm_tgr.models.vmoe_deit', 'VMoEVisionTransformerDistilled': 'timm_tgr.models.vmoe_deit',
    'UPCYCLED_TAG': 'timm_tgr.models.vmoe_deit', 'load_dense_state_dict': 'timm_tgr.models.upcycle',
    'upcycle_dense_state_dict': 'timm_tgr.models.upcycle', 'upcycle_from': 'timm_tgr.models.upcycle',
    'upcycled_eval_capacity_factor': 'timm_tgr.models.upcycle',
}
MODULES = {'losses': 'timm_tgr.layers.losses', 'moe_baselines': 'timm_tgr.models.moe_baselines',
           'stablemoe': 'timm_tgr.task.stablemoe'}


@pytest.mark.parametrize('name', sorted(PUBLIC))
def test_public_name_is_its_home_modules_object(name):
    home = importlib.import_module(PUBLIC[name])
    obj = getattr(timm_tgr, name)
    assert obj is getattr(home, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert obj.__module__ == PUBLIC[name]  # defined there, not re-exported from elsewhere


@pytest.mark.parametrize('name', sorted(MODULES))
def test_public_module_is_the_module(name):
    assert getattr(timm_tgr, name) is importlib.import_module(MODULES[name])


def test_pre_layout_module_paths_are_gone():
    for old in ('router', 'moe', 'vmoe_deit', 'tasks', 'guidance'):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f'timm_tgr.{old}')


def test_every_model_registered():
    names = set(timm.list_models('*moe_deit*'))
    for size in ('tiny', 'small', 'base'):
        for family in ('vmoe', 'tgr_moe'):
            assert {f'{family}_deit_{size}', f'{family}_deit_{size}_distilled'} <= names
        assert {f'soft_moe_deit_{size}', f'ec_moe_deit_{size}'} <= names
