"""train_tgr.py resolves its command line once into a RunSpec: typed sections that read every flag, the dataset's
defaults and the resolved model and teacher filled in, the parsed flags left alone, and the record (args.yaml, a
checkpoint's args) holding the keys it always held."""
import copy
import dataclasses

from timm_tgr.task import GuidanceConfig
from timm_tgr.train import build_parser, parse_args
from timm_tgr.train.args import guidance_flag
from timm_tgr.train.spec import GuidanceSpec, RunSpec, resolve_run

# what the record holds besides the flags (the keys earlier versions wrote into args.yaml)
RECORDED = {'model_arch', 'model_kwargs_resolved', 'teacher_resolved', 'distributed', 'world_size', 'rank',
            'local_rank', 'prefetcher'}
# flags no section reads by name: the config file, the process group's, the prefetcher switch (resolved)
UNREAD = {'config', 'dist_backend', 'dist_url', 'no_prefetcher'}


def _sections():
    return [f.type for f in dataclasses.fields(RunSpec) if f.name != 'flags']


def test_every_flag_is_read_by_one_section():
    flags = {a.dest for a in build_parser()._actions if a.dest != 'help'}
    guidance = {guidance_flag(n)[2:].replace('-', '_') for n in GuidanceConfig.__dataclass_fields__
                if guidance_flag(n)} | {'trust_checkpoint'}
    read = [f.name for section in _sections() for f in dataclasses.fields(section) if f.name in flags]
    assert len(read) == len(set(read)), sorted(n for n in read if read.count(n) > 1)
    assert flags == set(read) | (guidance - {'trust_checkpoint'}) | UNREAD


def test_resolving_leaves_the_flags_alone_and_records_what_it_always_did():
    args = parse_args([])
    before = copy.deepcopy(vars(args))
    spec = resolve_run(args)
    assert vars(args) == before
    assert set(spec.record()) == set(before) | RECORDED


def test_fashion_mnist_defaults_fill_only_what_is_not_given():
    """Fashion-MNIST is 28x28 grayscale in 10 classes, its pixels' mean 0.286 and std 0.353."""
    spec = resolve_run(parse_args([]))
    assert (spec.model.in_chans, spec.model.num_classes, spec.model.img_size, spec.data.crop_pct) == (1, 10, 28, 1.)
    assert [round(v, 3) for v in spec.data.mean + spec.data.std] == [0.286, 0.353]
    assert spec.model.model_kwargs_resolved == {'num_classes': 10, 'img_size': 28, 'in_chans': 1}
    spec = resolve_run(parse_args(['--model-kwargs', 'in_chans=3', '--img-size', '32', '--mean', '0.5']))
    assert (spec.model.in_chans, spec.model.img_size, spec.data.mean) == (None, 32, [0.5])
    assert spec.model.model_kwargs_resolved['in_chans'] == 3
    assert resolve_run(parse_args(['--dataset', ''])).model.num_classes is None


def test_the_teacher_is_resolved_once():
    spec = resolve_run(parse_args(['--distill-weight', '2']))
    assert spec.guidance.teacher.startswith('deit3_small_patch16_224')  # Table S1: DeiT-III-Small teaches Tiny
    assert spec.guidance.config.distill_weight == 2. and spec.guidance.config.teacher == spec.guidance.teacher
    off = resolve_run(parse_args(['--teacher', 'none']))
    assert off.guidance == GuidanceSpec(teacher=None, config=None, freeze_router_at=None, probe_samples=1000,
                                        consistency_pretrained='auto')
    assert off.record()['teacher_resolved'] is None
