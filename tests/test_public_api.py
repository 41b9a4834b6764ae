"""The package's public names and the module paths from before the layers/models/task layout."""
import importlib

import pytest

import timm
import timm_tgr

# every name `from timm_tgr import ...` gave before the layout change (0.1.0, commit 4f39cfb)
PUBLIC = (
    'ExpertChoiceMoE', 'ExpertChoiceVisionTransformer', 'GroupedExperts', 'MoEBlock', 'PAPER_MOE_LAYERS', 'RouterOutput',
    'RoutingInfo', 'SoftMoE', 'SoftMoERouter', 'SoftMoEVisionTransformer', 'SparseMoE', 'TopKRouter',
    'VMoEVisionTransformer', 'VMoEVisionTransformerDistilled', 'assign_slots', 'expert_capacity',
    'expert_choice_capacity', 'losses', 'moe_baselines', 'soft_moe_slots', 'stablemoe',
)

# old module -> a name it held, and the new home of that name
MOVED = {
    'router': ('TopKRouter', 'timm_tgr.layers.router'),
    'moe': ('SparseMoE', 'timm_tgr.layers.sparse_moe'),
    'soft_moe': ('SoftMoE', 'timm_tgr.layers.soft_moe'),
    'expert_choice': ('ExpertChoiceMoE', 'timm_tgr.layers.expert_choice'),
    'vmoe_deit': ('HF_HUB_ORG', 'timm_tgr.models.vmoe_deit'),
    'guidance': ('DistillSchedule', 'timm_tgr.task.schedule'),
    'tasks': ('TGRTask', 'timm_tgr.task.tgr_task'),
    'metrics': ('ConsistencyTracker', 'timm_tgr.task.metrics'),
    'timm_train': ('pop_guidance_kwargs', 'timm_tgr.task.timm_train'),
    'losses': ('load_balance_loss', 'timm_tgr.layers.losses'),
    'moe_baselines': ('SoftMoEVisionTransformer', 'timm_tgr.models.moe_baselines'),
    'stablemoe': ('freeze_routers', 'timm_tgr.task.stablemoe'),
}


@pytest.mark.parametrize('name', PUBLIC)
def test_public_name_importable(name):
    assert getattr(timm_tgr, name) is not None


@pytest.mark.parametrize('old', sorted(MOVED))
def test_old_module_path_still_imports(old):
    name, new = MOVED[old]
    module = importlib.import_module(f'timm_tgr.{old}')
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    ns = {}
    exec(f'from timm_tgr.{old} import {name}', ns)
    assert ns[name] is getattr(module, name)


def test_every_model_still_registered():
    names = set(timm.list_models('*moe_deit*'))
    for size in ('tiny', 'small', 'base'):
        for family in ('vmoe', 'tgr_moe'):
            assert {f'{family}_deit_{size}', f'{family}_deit_{size}_distilled'} <= names
        assert {f'soft_moe_deit_{size}', f'ec_moe_deit_{size}'} <= names
