"""The package's public names: each one importable from ``timm_tgr`` is the object its home module defines.

The top level is the model API (the MoE layers, the model classes, upcycling, and the ``losses``, ``moe_baselines`` and
``stablemoe`` modules), as docs/models.md says; training, data and helper names are imported from their subpackage
(``timm_tgr.task``, ``timm_tgr.data``, ``timm_tgr.utils``), as timm keeps ``timm.task`` and ``timm.data`` apart."""
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


def test_top_level_exports_exactly_the_model_api():
    assert set(timm_tgr.__all__) == set(PUBLIC) | set(MODULES) | {'__version__'}


# names docs point to in their subpackage, not at the top level
SUBPACKAGE_NAMES = {'timm_tgr.task': ('TGRTask', 'VMoETask', 'GuidanceConfig'),
                    'timm_tgr.utils': ('read_metrics', 'metrics_row', 'read_checkpoint'),
                    'timm_tgr.data': ('DeviceDataLoader', 'prepare_fashion_mnist'),
                    'timm_tgr.models': ('HF_HUB_ORG',)}


@pytest.mark.parametrize('package', sorted(SUBPACKAGE_NAMES))
def test_training_and_helper_names_live_in_their_subpackage(package):
    module = importlib.import_module(package)
    for name in SUBPACKAGE_NAMES[package]:
        assert name in module.__all__, (package, name)
        assert not hasattr(timm_tgr, name), f'{name} is at the top level: say so in docs/models.md'


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
