"""GuidanceConfig is the one definition of the TGR options: the paper's values, the ``tgr_*`` model kwargs of timm's
train.py, TGRTask's defaults and checks all follow it, and a bad value names its option and the fix."""
import dataclasses
import inspect
import pathlib
import re

import pytest
import timm

import timm_tgr  # noqa: F401
from timm_tgr.task import GuidanceConfig, TGRTask, VMoETask, create_training_task
from timm_tgr.task import timm_train
from timm_tgr.task.options import paper_value
from timm_tgr.task.timm_train import guidance_config

PACKAGE = pathlib.Path(timm_tgr.__file__).parent
TINY = dict(embed_dim=32, num_heads=2, patch_size=4, img_size=16, in_chans=1, num_classes=3, num_experts=4)
# one non-default value per tgr_* option (a new option needs one here)
SAMPLES = dict(
    teacher='deit_tiny_patch16_224', teacher_checkpoint='teacher.pth', teacher_kwargs={'img_size': 16},
    teacher_pretrained=False, mode='distill_only', distill_weight=2.5, teacher_load_weight=0.01,
    teacher_entropy_weight=0., schedule='first', distill_fraction=0.25, layer_map='last',
    teacher_routers='run/last.pth.tar', total_steps=100,
)


def test_defaults_are_the_papers():
    """Table S1: lambda_distill 5.0, lambda_load 0.005, lambda_ent 0.005 (0 in the upper bound's Eq. S1); the
    timing ablation's best fraction is the first half; the teacher layer is the aligned one."""
    g = GuidanceConfig()
    assert (g.distill_weight, g.teacher_load_weight, g.distill_fraction) == (5.0, 0.005, 0.5)
    assert g.teacher_entropy_weight is None and paper_value('teacher_entropy_weight') == 0.005
    assert (g.mode, g.schedule, g.layer_map, g.teacher, g.teacher_pretrained) == ('tgr', 'full', 'aligned', None, True)


def test_distill_weight_default_is_written_once():
    lines = [f'{p.relative_to(PACKAGE)}:{i}' for p in PACKAGE.rglob('*.py')
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r'(?<![\d.])5\.0(?![\d])', line)
             and 'distill' in line]
    assert len(lines) == 1 and lines[0].startswith('task/options.py:'), lines


def test_tgr_task_defaults_are_the_configs():
    params = inspect.signature(TGRTask).parameters
    shared = [f.name for f in dataclasses.fields(GuidanceConfig) if f.name in params]
    assert {'mode', 'distill_weight', 'teacher_load_weight', 'teacher_entropy_weight', 'schedule',
            'distill_fraction', 'layer_map', 'total_steps'} <= set(shared)
    assert all(params[n].default == getattr(GuidanceConfig(), n) for n in shared)


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(distill_weight=-1.), ValueError, 'distill_weight must be >= 0 and finite (lambda_distill), got -1.0.'),
    (dict(teacher_load_weight=float('nan')), ValueError, 'teacher_load_weight must be >= 0 and finite'),
    (dict(distill_fraction=1.5), ValueError, 'distill_fraction must be in [0, 1] and finite'),
    (dict(mode='teacher'), ValueError, "mode must be one of tgr, distill_only, teacher_route, got 'teacher'."),
    (dict(schedule='half'), ValueError, "schedule must be one of full, first, off, adaptive, got 'half'."),
    (dict(total_steps=0), ValueError, 'total_steps must be >= 1'),
    (dict(distill_weight='5'), TypeError, "distill_weight='5' must be int or float."),
    (dict(teacher_kwargs=[1]), TypeError, 'teacher_kwargs=[1] must be dict.'),
])
def test_config_refuses_a_bad_value_naming_the_field(kwargs, error, message):
    with pytest.raises(error) as e:
        GuidanceConfig(**kwargs)
    assert message in str(e.value)


def test_tgr_kwargs_are_the_options():
    """Every option but trust_checkpoint is a tgr_* model kwarg, read into the same field; tgr_enable is the one
    kwarg that is no option."""
    kwargs = {f'tgr_{k}': v for k, v in SAMPLES.items()}
    model = timm.create_model('vmoe_deit_tiny', **TINY, **kwargs)
    guidance = guidance_config(model)
    assert {k: getattr(guidance, k) for k in SAMPLES} == SAMPLES
    assert set(timm_train.GUIDANCE_KEYS) == set(SAMPLES) | {'enable'}
    assert all(f'``tgr_{k}``' in timm_train.__doc__ for k in SAMPLES)  # its table of the kwargs
    with pytest.raises(TypeError, match="unknown TGR option 'tgr_trust_checkpoint'"):
        guidance_config(timm.create_model('vmoe_deit_tiny', **TINY, tgr_trust_checkpoint=True))


def test_tgr_kwarg_defaults_are_the_configs():
    guidance = guidance_config(timm.create_model('tgr_moe_deit_tiny', **TINY))
    assert guidance == GuidanceConfig(teacher=guidance.teacher)
    assert guidance.teacher.startswith('deit3_small_patch16_224')  # Table S1: DeiT-III-Small teaches Tiny


@pytest.mark.parametrize('kwarg, message', [
    (dict(tgr_distill_weight=-1), 'tgr_distill_weight must be >= 0 and finite (lambda_distill), got -1. Pass '
                                  '--model-kwargs tgr_distill_weight=VALUE, or leave it out for the default (5.0).'),
    (dict(tgr_mode='upper'), "tgr_mode must be one of tgr, distill_only, teacher_route, got 'upper'."),
    (dict(tgr_layer_map='first'), "tgr_layer_map must be one of aligned, last, got 'first'."),
])
def test_a_bad_tgr_kwarg_names_the_kwarg_and_the_fix(kwarg, message):
    model = timm.create_model('tgr_moe_deit_tiny', **TINY, **kwarg)
    with pytest.raises(ValueError) as e:
        timm_train.create_task(model, verbose=False)
    assert message in str(e.value)


def test_teacher_none_trains_without_guidance():
    """'none' means no teacher wherever the teacher option is given."""
    model = timm.create_model('tgr_moe_deit_tiny', **TINY, tgr_teacher='none')
    assert guidance_config(model) is None
    assert isinstance(timm_train.create_task(model, verbose=False), VMoETask)
    task = create_training_task(model, guidance=GuidanceConfig(teacher='None'), verbose=False)
    assert isinstance(task, VMoETask)
