"""A study's runs as ``train_tgr.py`` command lines, from the tier (study.py) and the command line's overrides."""
import os
from typing import Dict, List, Optional

import yaml

from timm_tgr.layers import SparseMoE
from timm_tgr.models._moe_vit import moe_layer_args

from .study import (
    ADAPTIVE_MIN_EPOCHS, QUICK_EPOCHS, QUICK_MODEL, QUICK_TEACHER_EPOCHS, QUICK_TRAIN, SWEEP_VARIANTS, VARIANTS,
)


# model kwargs that only an MoE model takes (left out for a dense variant): the MoE blocks' placement and every
# kwarg the V-MoE layer takes besides timm Mlp's, read from the layer so a new layer option needs no edit here
MOE_KWARGS = ('moe_layers',) + moe_layer_args(SparseMoE)


def config_path(name: str) -> str:
    from timm_tgr.quickstart import config_path as _config_path
    return _config_path(name)


def read_yaml(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def kv_args(d: dict) -> List[str]:
    """``{k: v}`` as ``--model-kwargs``-style ``k=v`` arguments."""
    return [f'{k}={v}' for k, v in d.items()]


def threads_per_job(threads: Optional[int], jobs: int, quick: bool) -> Optional[int]:
    """torch CPU threads of each run: --threads if given, 1 with --quick, else the cores divided among jobs
    (None with one job: torch's default)."""
    if threads is not None:
        return threads
    if quick:
        return 1
    if jobs > 1:
        return max(1, (os.cpu_count() or 1) // jobs)
    return None


class Plan:
    """Which runs (teacher and students), each a dict with its name, kind, variant, E, seed, epochs, teacher
    and the exact ``train_tgr.py`` argv. ``args`` are the resolved command-line options (tier applied)."""

    def __init__(self, args):
        self.args = args
        recipe = 'quick' if args.quick else args.recipe
        self.recipe = recipe
        self.teacher_cfg = config_path(f'fmnist_{recipe}_teacher.yaml')
        self.student_cfg = config_path(f'fmnist_{recipe}_tgr.yaml')
        self.teacher_config, self.student_config = read_yaml(self.teacher_cfg), read_yaml(self.student_cfg)
        t, s = self.teacher_config, self.student_config
        self.teacher_model_kwargs = dict(t.get('model_kwargs', {}))
        self.student_model_kwargs = dict(s.get('model_kwargs', {}))
        self.teacher_kwargs = dict(s.get('teacher_kwargs', {}))
        self.teacher_name = s.get('teacher', 'deit3_small_patch16_224')
        if args.quick:
            self.teacher_model_kwargs.update(QUICK_MODEL)
            self.student_model_kwargs.update(QUICK_MODEL)
            self.teacher_kwargs.update(QUICK_MODEL)
        teacher_override = dict(getattr(args, 'teacher_model_kwargs', None) or {})
        self.teacher_model_kwargs.update(teacher_override)  # the teacher's training run
        self.teacher_kwargs.update(teacher_override)  # and how the students build it
        self.epochs = args.epochs or (QUICK_EPOCHS if args.quick else int(s['epochs']))
        self.teacher_epochs = args.teacher_epochs or (QUICK_TEACHER_EPOCHS if args.quick else int(t['epochs']))
        self.jobs = max(1, int(args.jobs))
        self.threads = threads_per_job(args.threads, self.jobs, args.quick)
        self.workers = args.workers if args.workers is not None else (0 if args.quick else None)
        self.device_data = bool(args.device_data)
        self.runs_dir = os.path.join(args.output, 'runs')

    def common(self) -> List[str]:
        a = self.args
        argv = ['--data-dir', a.data_dir, '--output', self.runs_dir, '--no-progress']
        if a.device:
            argv += ['--device', a.device]
        if self.threads is not None:
            argv += ['--threads', str(self.threads)]
        if self.workers is not None:
            argv += ['-j', str(self.workers)]
        if a.quick:
            argv += QUICK_TRAIN
        if self.device_data:
            argv += ['--device-data']
        return argv

    def teacher_seeds(self) -> List[int]:
        return list(self.args.seeds) if self.args.teacher_per_seed else [self.args.seeds[0]]

    def teacher_for(self, seed: int) -> int:
        return seed if self.args.teacher_per_seed else self.args.seeds[0]

    def teacher_run(self, seed: int) -> dict:
        name = f'teacher-s{seed}'
        argv = ['-c', self.teacher_cfg, '--experiment', name, '--seed', str(seed),
                '--model-kwargs', *kv_args(self.teacher_model_kwargs), '--epochs', str(self.teacher_epochs)]
        return dict(name=name, kind='teacher', variant='teacher', label='dense teacher', experts=None, seed=seed,
                    epochs=self.teacher_epochs, argv=argv + self.common() + list(self.args.extra))

    def student_runs(self) -> List[dict]:
        """Seed-major (every variant of the first seed, then the next seed) or, with ``order='variant'``,
        variant-major (all seeds of a row before the next row); the sweep after the main comparison."""
        a = self.args
        wanted = [(v, a.main_experts) for v in self.variants()] + [(v, e) for e in a.experts for v in SWEEP_VARIANTS]
        if getattr(a, 'order', 'seed') == 'variant':
            keys = [(v, e, seed) for v, e in wanted for seed in a.seeds]
        else:
            keys = [(v, e, seed) for seed in a.seeds for v, e in wanted]
        runs, seen = [], set()
        for variant, experts, seed in keys:
            run = self.student_run(variant, experts, seed)
            if run['name'] not in seen:
                seen.add(run['name'])
                runs.append(run)
        return runs

    def variants(self) -> List[str]:
        """The main comparison's variants, without the adaptive switch where it cannot fire (see skipped())."""
        return [v for v in self.args.variants if v not in self.skipped()]

    def skipped(self) -> Dict[str, str]:
        """Variants asked for but not run, and why."""
        if 'tgr_adaptive' in self.args.variants and self.epochs < ADAPTIVE_MIN_EPOCHS:
            return {'tgr_adaptive': f'the adaptive switch needs >= {ADAPTIVE_MIN_EPOCHS} epochs to fire (its patience '
                                    f'plus 2); at {self.epochs} it would be TGR (full) again'}
        return {}

    def _student_kwargs(self, variant: str, experts: Optional[int]) -> dict:
        """The recipe's student model kwargs for a variant: with its experts and extra kwargs, or without any
        MoE kwargs for a dense variant."""
        spec = VARIANTS[variant]
        if spec.get('moe', True):
            return dict(self.student_model_kwargs, num_experts=experts, **spec.get('model_kwargs', {}))
        return {k: v for k, v in self.student_model_kwargs.items() if k not in MOE_KWARGS}

    def student_run(self, variant: str, experts: int, seed: int) -> dict:
        spec = VARIANTS[variant]
        if not spec.get('moe', True):
            experts = None
        name = f'{variant}-s{seed}' if experts is None else f'{variant}-E{experts}-s{seed}'
        kwargs = self._student_kwargs(variant, experts)
        argv = ['-c', self.student_cfg, '--experiment', name, '--seed', str(seed), '--model', spec['model'],
                '--model-kwargs', *kv_args(kwargs), '--epochs', str(self.epochs)]
        teacher = self.teacher_run(self.teacher_for(seed))['name'] if spec['teacher'] else None
        if teacher:
            argv += ['--teacher', self.teacher_name, '--teacher-kwargs', *kv_args(self.teacher_kwargs),
                     '--teacher-checkpoint', os.path.join(self.runs_dir, teacher, 'model_best.pth.tar')]
        elif spec.get('random_teacher'):  # same architecture, untrained weights (seeded by --seed)
            argv += ['--teacher', self.teacher_name, '--teacher-kwargs', *kv_args(self.teacher_kwargs),
                     '--no-teacher-pretrained']
        argv += [str(self.args.stablemoe_freeze_at) if x is None else x for x in spec['argv']]
        return dict(name=name, kind='student', variant=variant, label=spec['label'], experts=experts, seed=seed,
                    epochs=self.epochs, teacher=teacher, argv=argv + self.common() + list(self.args.extra))

    def runs(self) -> List[dict]:
        """Teachers first (only those some student needs; the first one when none does: the teacher row is
        always reported), then the students in seed-major order."""
        students = self.student_runs()
        teachers = [self.teacher_run(s) for s in self.teacher_seeds()]
        needed = {r['teacher'] for r in students if r['teacher']}
        return ([t for t in teachers if t['name'] in needed] or teachers[:1]) + students

    # ---- what the estimate needs to build each run's models
    def model_spec(self, run: dict) -> Dict[str, object]:
        """The model (timm name, kwargs), its teacher (name, kwargs) if guided, batch size and recipe flags."""
        cfg = self.teacher_config if run['kind'] == 'teacher' else self.student_config
        data = {k: cfg[k] for k in ('img_size', 'in_chans', 'num_classes') if k in cfg}
        if run['kind'] == 'teacher':
            model, kwargs, teacher = cfg['model'], dict(self.teacher_model_kwargs, **data), None
        else:
            spec = VARIANTS[run['variant']]
            model = spec['model']
            kwargs = dict(self._student_kwargs(run['variant'], run['experts']), **data)
            guided = spec['teacher'] or spec.get('random_teacher')
            teacher = (self.teacher_name, dict(self.teacher_kwargs)) if guided else None
        batch = int(QUICK_TRAIN[QUICK_TRAIN.index('-b') + 1]) if self.args.quick else int(cfg.get('batch_size', 128))
        mixup = bool(cfg.get('mixup', 0.) or cfg.get('cutmix', 0.)) and not cfg.get('no_aug', False)
        return dict(model=model, kwargs=kwargs, teacher=teacher, batch_size=batch, amp=bool(cfg.get('amp')),
                    mixup=mixup, smoothing=float(cfg.get('smoothing', 0.1)),
                    mode=next((run['argv'][i + 1] for i, a in enumerate(run['argv']) if a == '--tgr-mode'), 'tgr'))
