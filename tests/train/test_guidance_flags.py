"""train_tgr.py's teacher-guidance flags are GuidanceConfig's options: one flag each, with its default, help and
range, read back into the same field."""
import argparse

import pytest

from timm_tgr.task import GuidanceConfig
from timm_tgr.task.options import guidance_options
from timm_tgr.train import build_parser, parse_args
from timm_tgr.train.args import guidance_flag, guidance_from_flags

# one non-default value per flag and the option it gives (a new option needs one here); PATH: an existing file
SAMPLES = {
    'teacher': (['--teacher', 'deit_tiny_patch16_224'], 'deit_tiny_patch16_224'),
    'teacher_checkpoint': (['--teacher-checkpoint', 'PATH'], 'PATH'),
    'teacher_kwargs': (['--teacher-kwargs', 'img_size=16', 'mean=0.5'], {'img_size': 16, 'mean': 0.5}),
    'teacher_pretrained': (['--no-teacher-pretrained'], False),
    'mode': (['--tgr-mode', 'teacher_route'], 'teacher_route'),
    'distill_weight': (['--distill-weight', '2.5'], 2.5),
    'teacher_load_weight': (['--teacher-load-weight', '0.01'], 0.01),
    'teacher_entropy_weight': (['--teacher-entropy-weight', '0'], 0.),
    'schedule': (['--distill-schedule', 'first'], 'first'),
    'distill_fraction': (['--distill-fraction', '0.25'], 0.25),
    'layer_map': (['--layer-map', 'last'], 'last'),
    'teacher_routers': (['--teacher-routers-from', 'PATH'], 'PATH'),
}
NO_FLAG = {'trust_checkpoint', 'total_steps'}  # --trust-checkpoint covers every checkpoint; total_steps is counted


def _given(args):
    return dict(trust_checkpoint=args.trust_checkpoint, total_steps=None)


def test_every_option_has_its_flag():
    assert set(guidance_options()) == set(SAMPLES) | NO_FLAG
    assert {n for n in guidance_options() if guidance_flag(n) is None} == NO_FLAG


def test_the_default_command_line_gives_the_default_config():
    args = parse_args([])
    assert guidance_from_flags(args, **_given(args)) == GuidanceConfig()


@pytest.mark.parametrize('name', sorted(SAMPLES))
def test_a_flag_sets_its_option(name, tmp_path):
    path = tmp_path / 'x.pth.tar'
    path.write_bytes(b'')
    argv, value = SAMPLES[name]
    argv = [str(path) if a == 'PATH' else a for a in argv]
    args = parse_args(argv)
    config = guidance_from_flags(args, **_given(args))
    assert getattr(config, name) == (str(path) if value == 'PATH' else value)
    others = {n for n in SAMPLES if n != name}
    assert all(getattr(config, n) == getattr(GuidanceConfig(), n) for n in others)


def test_help_says_the_options_meaning():
    groups = {g.title: g for g in build_parser()._action_groups}
    actions = {a.dest: a for a in groups['Teacher-guided routing']._group_actions}
    assert actions['distill_weight'].help == 'lambda_distill (paper: 5.0)'  # Table S1
    assert actions['distill_fraction'].help == 'fraction for --distill-schedule first'
    assert actions['no_teacher_pretrained'].help == ('random teacher weights when no --teacher-checkpoint '
                                                     '(debugging only)')
    for name, (_, default, meaning) in guidance_options().items():
        flag = guidance_flag(name)
        if flag is None:
            continue
        action = actions[flag[2:].replace('-', '_')]
        assert action.option_strings == [flag]
        assert '{' not in action.help and all(w in action.help for w in meaning.help.split() if '{' not in w)
        if meaning.choices:
            assert tuple(action.choices) == meaning.choices
        if not isinstance(action, argparse._StoreTrueAction) and not meaning.path and default != {}:
            assert action.default == default
