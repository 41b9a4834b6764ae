"""The Fashion-MNIST study of benchmarks/reproduce.py: what is compared, at which budget, against which paper numbers.

Nothing here runs anything: ``plan.py`` turns a tier into ``train_tgr.py`` command lines, ``runner.py``
runs them, ``collect.py`` and ``tables.py`` turn their run folders into tables and plots.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from timm_tgr.task.schedule import DistillSchedule

# The adaptive switch (DistillSchedule 'adaptive') needs its patience in epochs of consistency history after a first
# epoch to compare with: below this many epochs it cannot fire and its row would be TGR (full) again.
ADAPTIVE_MIN_EPOCHS = DistillSchedule('full').patience + 2

# StableMoE freeze point (fraction of the updates). Supplement C.3 says only that the router is "copied"
# and then frozen without distillation; it gives no switch point. We freeze at half of training, the
# boundary at which the paper's best TGR schedule (distillation in the first half) hands the router
# over to the task loss alone, so the two differ only in what the router does in the second half
# (frozen vs. still learning). Override with --stablemoe-freeze-at.
STABLEMOE_FREEZE_AT = 0.5

# variant -> label, model, whether a teacher guides it, train_tgr.py flags; optional: model_kwargs (added to the
# recipe's), moe=False (a dense model: no experts). The order is the row order of the tables and the priority
# order of the variant-major tiers (what runs first when time runs out).
VARIANTS = {
    'dense': dict(label='dense student (no MoE)', model='deit_tiny_patch16_224', teacher=False, moe=False,
                  argv=['--teacher', 'none']),
    'vmoe': dict(label='V-MoE', model='vmoe_deit_tiny', teacher=False, argv=['--teacher', 'none']),
    'tgr': dict(label='TGR (full)', model='tgr_moe_deit_tiny', teacher=True, argv=['--distill-schedule', 'full']),
    'tgr_first': dict(label='TGR (first half)', model='tgr_moe_deit_tiny', teacher=True,
                      argv=['--distill-schedule', 'first', '--distill-fraction', '0.5']),
    'tgr_adaptive': dict(label='TGR (adaptive switch)', model='tgr_moe_deit_tiny', teacher=True,
                         argv=['--distill-schedule', 'adaptive']),
    'distill_only': dict(label='distillation only', model='tgr_moe_deit_tiny', teacher=True,
                         argv=['--tgr-mode', 'distill_only', '--distill-schedule', 'full']),
    'teacher_route': dict(label='teacher route', model='tgr_moe_deit_tiny', teacher=True,
                          argv=['--tgr-mode', 'teacher_route', '--distill-schedule', 'full']),
    'tgr_last': dict(label='TGR (full), last teacher layer', model='tgr_moe_deit_tiny', teacher=True,
                     argv=['--distill-schedule', 'full', '--layer-map', 'last']),
    'stablemoe': dict(label='StableMoE (frozen router)', model='vmoe_deit_tiny', teacher=False,
                      argv=['--teacher', 'none', '--freeze-router-at', None]),  # None: filled from the flag
    'soft_moe': dict(label='Soft-MoE', model='soft_moe_deit_tiny', teacher=False, argv=['--teacher', 'none']),
    'expert_choice': dict(label='Expert-Choice', model='ec_moe_deit_tiny', teacher=False, argv=['--teacher', 'none']),
    'vmoe_noise1': dict(label='V-MoE, noise 1.0 (Table S1 literal)', model='vmoe_deit_tiny', teacher=False,
                        argv=['--teacher', 'none'], model_kwargs={'router_noise_std': 1.0}),
    'tgr_noise1': dict(label='TGR (full), noise 1.0 (Table S1 literal)', model='tgr_moe_deit_tiny', teacher=True,
                       argv=['--distill-schedule', 'full'], model_kwargs={'router_noise_std': 1.0}),
    # the control: the same teacher architecture with untrained weights (seeded by the run's seed), routers and
    # losses as in TGR (full). If it gains as much as the trained teacher, the gain is a routing prior.
    'tgr_random_teacher': dict(label='TGR (full), untrained teacher', model='tgr_moe_deit_tiny', teacher=False,
                               random_teacher=True, argv=['--distill-schedule', 'full']),
}
SWEEP_VARIANTS = ('vmoe', 'tgr')
# TGR students that route with their own router at inference (candidates for the export check)
EXPORT_CANDIDATES = ('tgr', 'tgr_first', 'tgr_adaptive', 'distill_only', 'tgr_last', 'tgr_noise1')
# variants that run a second validation pass per epoch (teacher routing)
TWO_EVAL_VARIANTS = ('teacher_route',)

# The paper's numbers (ImageNet-1K, DeiT-Tiny, K=1; Table 5 / ablations at E=8, supplement C.3; the dense ViT
# and Soft-MoE only appear in the main table, whose Tiny MoEs have E=16: ``top1_main_e16``).
PAPER = {
    'dataset': 'ImageNet-1K, DeiT-Tiny, K=1 (TGR-MoE, CVPR 2026, arXiv 2604.21330)',
    'top1_e8': {'vmoe': 77.39, 'tgr': 77.81, 'tgr_first': 78.13, 'distill_only': 77.83, 'stablemoe': 77.19,
                'teacher_route': 80.19, 'student_route': 74.84, 'tgr_last': 75.83},
    'top1_main_e16': {'dense': 74.62, 'vmoe': 77.85, 'soft_moe': 79.31, 'tgr': 78.78},
    'sweep': {'experts': [4, 8, 16, 32, 64, 128],
              'vmoe': [76.18, 77.39, 77.85, 78.41, 78.74, 79.38],
              'tgr': [76.59, 77.81, 78.78, 79.35, 79.95, 80.36]},
    'routing': {'adjacent_consistency_tgr': '~0.8', 'adjacent_consistency_vmoe': '0.5-0.6',
                'to_final_tgr_first_sixth': '>0.70 within 50 of 300 epochs'},
    'entropy_table_s2': {'vmoe_tiny': [0.9098, 0.7776, 0.9489], 'tgr_tiny': [0.9701, 0.9627, 0.9420]},
}


def paper_top1(variant: str) -> Optional[tuple]:
    """The paper's top-1 for a row and where it comes from: ``(value, 'E=8')`` (ablations) or
    ``(value, 'main, E=16')``; None where the paper has no number."""
    if variant in PAPER['top1_e8']:
        return PAPER['top1_e8'][variant], 'E=8'
    if variant in PAPER['top1_main_e16']:
        return PAPER['top1_main_e16'][variant], 'main, E=16'
    return None


# tiny dims for --quick (CI): every model 28x28, patch 7 (16 tokens), width 32
QUICK_MODEL = {'embed_dim': 32, 'num_heads': 2, 'patch_size': 7}
QUICK_TRAIN = ['-b', '16', '--warmup-epochs', '0', '--probe-samples', '16', '--no-plot', '--log-interval', '1000']
QUICK_EPOCHS, QUICK_TEACHER_EPOCHS = 2, 1


@dataclass(frozen=True)
class Tier:
    """One budgeted study: which runs, on which recipe, how long, and why that fits."""
    name: str
    summary: str
    recipe: str  # configs/fmnist_<recipe>_{teacher,tgr}.yaml
    variants: Tuple[str, ...]
    main_experts: int
    experts: Tuple[int, ...]  # the V-MoE vs TGR sweep (empty: none)
    seeds: Tuple[int, ...] = (0, 1, 2)
    epochs: Optional[int] = None  # None: the recipe's
    teacher_epochs: Optional[int] = None
    jobs: int = 1  # runs at once (1: in this process, one after the other)
    device_data: bool = False  # add train_tgr.py's --device-data (data and augmentation on the GPU)
    budget_s: Optional[float] = None  # wall-time budget of the whole tier
    order: str = 'seed'  # 'seed': every variant of seed 0, then seed 1, ...; 'variant': all seeds of a row in turn
    teacher_per_seed: bool = False  # one teacher per seed (its variance enters the error bars) instead of one
    teacher_model_kwargs: Tuple[Tuple[str, object], ...] = ()  # override the recipe's teacher model kwargs
    why: str = ''


_GPU_WHY = (
    'configs/fmnist_gpu_*.yaml: DeiT-Tiny width 192, patch 4 (49 tokens), batch 256 (234 steps/epoch), 12 epochs for '
    'teacher and students, Table S1 regularization (Mixup 0.8, CutMix 1.0, smoothing 0.1), no EMA. At 28x28 a '
    'DeiT-Tiny step is bound by kernel launches, not FLOPs, so a narrower model would not buy epochs: the paper\'s '
    'width stays. Data and augmentation stay on the GPU (--device-data: no host work per step) and {jobs} runs share '
    'it (separate processes fill the GPU\'s idle time between one run\'s kernels). 12 epochs were chosen without a '
    'GPU at hand, from an assumed ~20 ms per TGR step and ~3x throughput from {jobs} concurrent runs: {runs} then '
    'take ~{minutes} min; the estimate printed before training is the check (--estimate-only prints it and stops; '
    'lower --epochs if it does not fit).')

TIERS: Dict[str, Tier] = {t.name: t for t in (
    Tier('full', 'the paper-scale study: every variant at E=8 and the E=4..32 sweep, 100 epochs (hours of GPU time)',
         recipe='full', variants=tuple(VARIANTS), main_experts=8, experts=(4, 8, 16, 32),
         why='configs/fmnist_full_*.yaml (DeiT-Tiny width, patch 4, 100 epochs, timm\'s loader with '
             'RandomResizedCrop, EMA): the recipe the shorter tiers are cut from; no budget, one run after the '
             'other.'),
    Tier('cpu', 'V-MoE, TGR (full), TGR (first half) at E=8, 3 seeds, on a 2-core CPU',
         recipe='quick', variants=('vmoe', 'tgr', 'tgr_first'), main_experts=8, experts=(), jobs=2, budget_s=75 * 60,
         why='configs/fmnist_quick_*.yaml (the quickstart recipe: width 64, patch 7, 16 tokens, batch 128, no '
             'augmentation; teacher 2 epochs, students 3; timm\'s CPU loader, no --device-data): one teacher and 9 '
             'students, 2 runs at once with 1 thread each. One 2-thread process collapses as soon as anything else '
             'uses a core (OpenMP threads wait on each other: 2.2-3.0 s per step measured here under load, against '
             '0.24-0.32 s with 1 thread), two 1-thread processes do not.'),
    Tier('cpu-all', 'every row of the paper\'s comparison at E=8 (13 variants, 3 seeds), then the V-MoE vs TGR '
                    'sweep at E = 4, 16, 32, on a 2-core CPU',
         recipe='quick', variants=tuple(VARIANTS), main_experts=8, experts=(4, 16, 32), jobs=2, budget_s=150 * 60,
         order='variant',
         why='The CPU tier\'s recipe (configs/fmnist_quick_*.yaml: width 64, patch 7, 17 tokens, batch 128, no '
             'augmentation; teacher 2 epochs, students 3) for every row, one teacher, 2 runs at once with 1 thread '
             'each. Runs go row by row in the table\'s order (all seeds of a row, then the next row), so when time '
             'runs out the rows that matter most are complete; the same command resumes.'),
    Tier('cpu-recipe', 'V-MoE routed as V-MoE\'s code does (groups of 8 images, clean-softmax importance loss per '
                       'group, noise-based load loss, noise 1/E): dense student, V-MoE, TGR (full) and the untrained-'
                       'teacher control at E=8, 3 seeds, on a 2-core CPU',
         recipe='quick', variants=('dense', 'vmoe', 'tgr', 'tgr_random_teacher'), main_experts=8, experts=(), jobs=2,
         budget_s=60 * 60, order='variant',
         why='The cpu-all recipe (configs/fmnist_quick_*.yaml, 3 student / 2 teacher epochs) under the new V-MoE '
             'defaults of the MoE layer; one teacher as before, so the rows compare with the previous table. Row '
             'order: the paper\'s orderings first, the control last.'),
    Tier('cpu-teacher', 'a teacher that knows more than the student: trained 10 epochs instead of 2, one per seed; '
                        'TGR (full), first half, distillation only, teacher route, last teacher layer at E=8, 3 seeds, '
                        'on a 2-core CPU',
         recipe='quick', variants=('tgr', 'tgr_first', 'distill_only', 'teacher_route', 'tgr_last'), main_experts=8,
         experts=(), jobs=2, budget_s=120 * 60, order='variant', teacher_per_seed=True, teacher_epochs=10,
         why='The quickstart teacher (DeiT-III layout, width 64) trained 10 epochs, one per seed, so it knows more '
             'than a 3-epoch student and its own variance enters the error bars. Cheaper here than the paper\'s 2x '
             'width (a width-128 step costs 2.7x a width-64 one on this CPU; --teacher-model-kwargs embed_dim=128 '
             'num_heads=4 selects it). Dense, V-MoE and untrained-teacher rows come from the cpu-recipe study '
             '(the same runs: --baseline-study benchmarks/results/cpu_recipe reads them from its results.json and '
             'checks the recipe). Rows run in the order listed, so when time '
             'runs out the last rows are the ones cut.'),
    Tier('gpu-main', 'the main table: teacher; V-MoE, TGR full, TGR first-half, distillation only, teacher route '
                     'at E=8; 3 seeds; one H100',
         recipe='gpu', variants=('vmoe', 'tgr', 'tgr_first', 'distill_only', 'teacher_route'), main_experts=8,
         experts=(), jobs=8, device_data=True, budget_s=600,
         why=_GPU_WHY.format(jobs=8, runs='1 teacher + 15 students', minutes=7)),
    Tier('gpu-sweep', 'the expert sweep: V-MoE vs TGR (full) at E=4, 8, 16, 32; 3 seeds; one H100 (after gpu-main in '
                      'the same --output: its teacher and E=8 runs are reused)',
         recipe='gpu', variants=('vmoe', 'tgr'), main_experts=8, experts=(4, 8, 16, 32), jobs=8, device_data=True,
         budget_s=600, why=_GPU_WHY.format(jobs=8, runs='the 18 runs gpu-main has not trained', minutes=7)),
)}
DEFAULT_TIER = 'full'
