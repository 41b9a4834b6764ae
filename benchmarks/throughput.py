#!/usr/bin/env python3
"""Training and inference throughput: dense DeiT vs V-MoE DeiT vs TGR-MoE (student + frozen teacher).

Every configuration is measured in one process, side by side with its dense DeiT baseline, so the
ratios compare like with like (same device, batch, image size, autocast dtype, compile mode).

Rows (``--variants``):

- ``dense``: timm ``deit_{size}_patch16_224``; train step = forward + cross-entropy + backward + AdamW step.
- ``vmoe``: ``vmoe_deit_{size}`` with E experts (``--experts``), through :class:`timm_tgr.task.vmoe_task.VMoETask`
  (task loss + MoE auxiliary loss), same step.
- ``tgr``: ``tgr_moe_deit_{size}`` student in :class:`timm_tgr.task.tgr_task.TGRTask` with a randomly initialised
  frozen teacher (``--teacher``, ``teacher_pretrained=False``; truncated at the deepest routed block as
  TGRTask does); step = ``task(x, y)['loss'].backward()`` + AdamW over student + teacher routers.
  Training only: at inference a TGR-MoE model is a plain V-MoE (the ``vmoe`` infer row).
- ``teacher``: the truncated teacher's forward alone (no_grad, same autocast), so that the TGR goal
  ``t(TGR step) <= 1.05 * (t(V-MoE step) + t(teacher forward))`` can be checked.
- ``upcycled`` (not in the default ``--variants``): ``vmoe_deit_{size}`` upcycled from the dense row's
  architecture (random weights, :func:`timm_tgr.models.upcycle_dense_state_dict`) with the upcycled tags' eval
  capacity E/K, inference only: what ``timm.create_model('vmoe_deit_small', pretrained=True)`` evaluates.

MoE paths (``--moe-paths``): ``capacity`` is V-MoE's capacity buffer (cf 1.05 for ``vmoe``/``tgr``; for
``upcycled`` the C = S buffer, ``use_dropless=False``); ``dropless`` is the dropless expert path
(``capacity_factor='dropless'``; for ``upcycled`` its default at C = S).

``--preset dropless`` runs the rows of the dropless targets instead of the grid (evaluated on every device):
upcycled ``vmoe_deit_small`` eval at 224, batch 16, at most 1.10x the time of dense ``deit_small_patch16_224``;
``vmoe_deit_tiny`` E=16 dropless train step no slower than the capacity path at cf 1.05; on CUDA also the GPU
rows (Tiny upcycled eval, E=128 and Small E=8 train, eager and compiled).

Timing: ``--warmup`` untimed iterations (they include torch.compile), then ``--repeats`` timed runs of
``--steps`` iterations each, with ``torch.cuda.synchronize()`` before and after every timed run on
CUDA; the reported img/s is the median over the repeats. Memory: ``torch.cuda.max_memory_allocated``
(reset before each row) on CUDA; on CPU the resident-set-size growth of the process from just before
the row's model is built to the end of its timed runs (``/proc/self/statm``; null where unreadable).
It is not a peak and is a rough guide only.

Examples::

    python benchmarks/throughput.py --device cuda                  # the full grid (long: split it)
    python benchmarks/throughput.py --device cuda --models tiny --experts 16,128 --out tiny.json
    python benchmarks/throughput.py --quick                        # CPU smoke run, seconds (output/*-quick.json)
    python benchmarks/throughput.py --preset dropless --threads 2  # the dropless targets (CPU; CUDA adds GPU rows)
"""
import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _ROOT)
from harness.env import cpu_model_name  # noqa: E402

import timm  # noqa: E402
import timm_tgr  # noqa: E402,F401  (registers the models)
from timm_tgr.task.teacher import FeatureTeacher, build_teacher, default_teacher  # noqa: E402
from timm_tgr.layers import SparseMoE  # noqa: E402
from timm_tgr.layers.experts import EXPERT_IMPLS, GroupedExperts  # noqa: E402
from timm_tgr.models import upcycle_dense_state_dict, upcycled_eval_capacity_factor  # noqa: E402
from timm_tgr.task.tgr_task import TGRTask  # noqa: E402
from timm_tgr.task.vmoe_task import VMoETask  # noqa: E402
from timm_tgr.models.vmoe_deit import PAPER_MOE_LAYERS  # noqa: E402

SCHEMA = 'timm_tgr.benchmarks.throughput/1'
SIZES = ('tiny', 'small', 'base')
VARIANTS = ('dense', 'vmoe', 'tgr', 'teacher', 'upcycled')
DEFAULT_VARIANTS = ('dense', 'vmoe', 'tgr', 'teacher')
MOE_PATHS = ('capacity', 'dropless')
PHASES = ('train', 'infer')
COMPILE_MODES = ('eager', 'compile')
PAPER_EXPERTS = {'tiny': 16, 'small': 8, 'base': 8}
AMP_DTYPES = {'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16, 'float16': torch.float16, 'fp16': torch.float16,
              'float32': None, 'fp32': None, 'none': None}

# The throughput goals, evaluated on CUDA only: (name, check) pairs are built in evaluate_goals().
TRAIN_GOALS = {('small', 8): 0.90, ('tiny', 16): 0.85}
TRAIN_GOAL_E128 = 0.75
INFER_GOAL = 0.95
TGR_GOAL = 1.05

QUICK = dict(models='tiny', experts='8,16', batch_size=8, img_size=32, steps=2, warmup=1, repeats=3,
             compile_modes='eager')
CUDA_DEFAULTS = dict(models='tiny,small', experts='8,16,32,128', batch_size=256, img_size=224, steps=20,
                     warmup=10, repeats=5, compile_modes='eager,compile')
CPU_DEFAULTS = dict(models='tiny,small', experts='8,16,32,128', batch_size=32, img_size=224, steps=3,
                    warmup=1, repeats=3, compile_modes='eager')

# The dropless targets, evaluated on every device: the upcycled eval time at most 1.10x dense, and the dropless
# train step no slower than the capacity path at cf 1.05.
UPCYCLED_EVAL_GOAL = 1.10
DROPLESS_TRAIN_GOAL = 1.0
# --preset: rows (size, variant, phase, E, MoE path) instead of the grid, and its defaults per device type.
# Rows marked 'cuda' run only on CUDA (the GPU rows; printed as skipped elsewhere).
PRESETS = {
    'dropless': dict(
        rows=[
            ('small', 'dense', 'infer', None, None, 'any'),
            ('small', 'upcycled', 'infer', 8, 'capacity', 'any'),
            ('small', 'upcycled', 'infer', 8, 'dropless', 'any'),
            ('tiny', 'vmoe', 'train', 16, 'capacity', 'any'),
            ('tiny', 'vmoe', 'train', 16, 'dropless', 'any'),
            ('tiny', 'dense', 'infer', None, None, 'cuda'),
            ('tiny', 'upcycled', 'infer', 16, 'capacity', 'cuda'),
            ('tiny', 'upcycled', 'infer', 16, 'dropless', 'cuda'),
            ('tiny', 'vmoe', 'train', 128, 'capacity', 'cuda'),
            ('tiny', 'vmoe', 'train', 128, 'dropless', 'cuda'),
            ('small', 'dense', 'train', None, None, 'cuda'),
            ('small', 'vmoe', 'train', 8, 'capacity', 'cuda'),
            ('small', 'vmoe', 'train', 8, 'dropless', 'cuda'),
        ],
        # warmup 6 on CPU: with 2, the first row (dense) still paid the process's allocator and cache warm-up and
        # came out 15-20 % slower than when measured later, which made the upcycled model look faster than dense
        cpu=dict(batch_size=16, img_size=224, steps=3, warmup=6, repeats=5, compile_modes='eager'),
        cuda=dict(batch_size=256, img_size=224, steps=20, warmup=10, repeats=5, compile_modes='eager,compile'),
    ),
}


def _csv(value: str, allowed: Optional[Sequence[str]] = None, flag: str = '') -> List[str]:
    items = [v.strip() for v in value.split(',') if v.strip()]
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise SystemExit(f'{flag}: unknown value(s) {bad}; choose from {list(allowed)}.')
    if not items:
        raise SystemExit(f'{flag}: give at least one value.')
    return items


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', help=f'comma list of sizes from {SIZES} (default tiny,small)')
    p.add_argument('--variants', default=','.join(DEFAULT_VARIANTS),
                   help=f'comma list from {VARIANTS} (default {",".join(DEFAULT_VARIANTS)})')
    p.add_argument('--moe-paths', default='capacity',
                   help=f'comma list from {MOE_PATHS}: capacity buffer and/or dropless path for the MoE rows')
    p.add_argument('--preset', choices=sorted(PRESETS), default=None,
                   help='run a preset list of rows instead of the grid (--models/--variants/--experts/--modes/'
                        '--moe-paths ignored); dropless: the dropless targets (+ GPU rows on CUDA)')
    p.add_argument('--experts', help='comma list of E for vmoe/tgr rows (default 8,16,32,128)')
    p.add_argument('--expert-impl', default='bmm',
                   help=f'comma list from {EXPERT_IMPLS}: GroupedExperts matmul for vmoe/tgr rows')
    p.add_argument('--batch-size', type=int)
    p.add_argument('--img-size', type=int, help='square input size (models are created with img_size=...)')
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--teacher', default='deit3_small_patch16_224',
                   help="timm name of the TGR teacher (random init), or 'paper' for the paper's teacher per size")
    p.add_argument('--modes', default='train,infer', help=f'comma list from {PHASES}')
    p.add_argument('--compile-modes', help=f'comma list from {COMPILE_MODES} (default eager,compile on CUDA, '
                                           f'eager on CPU)')
    p.add_argument('--compile', dest='compile_flag', action='store_true', default=None,
                   help='shorthand for --compile-modes eager,compile')
    p.add_argument('--no-compile', dest='compile_flag', action='store_false',
                   help='shorthand for --compile-modes eager')
    p.add_argument('--compile-mode', default=None, help="torch.compile mode (e.g. 'max-autotune'); default None")
    p.add_argument('--steps', type=int, help='timed iterations per repeat')
    p.add_argument('--warmup', type=int, help='untimed iterations before timing (include compilation)')
    p.add_argument('--repeats', type=int, help='timed repeats; the median is reported')
    p.add_argument('--device', default=None, help="'cuda', 'cuda:1', 'cpu' (default: cuda if available)")
    p.add_argument('--amp-dtype', default=None,
                   help='autocast dtype: bfloat16 (default on CUDA), float16, or float32/none (default on CPU)')
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--fused-adamw', action='store_true', help='torch.optim.AdamW(fused=True) (CUDA)')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true',
                   help='tiny CPU smoke settings: ' + ', '.join(f'{k}={v}' for k, v in QUICK.items()))
    p.add_argument('--out', default=None,
                   help='JSON path (default benchmarks/results/throughput-<device>.json; with --quick '
                        'output/throughput-<device>-quick.json, so a smoke run never replaces a committed result)')
    args = p.parse_args(argv)

    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available here (use --device cpu).')
    defaults = QUICK if args.quick else (CUDA_DEFAULTS if device.type == 'cuda' else CPU_DEFAULTS)
    if args.preset:
        preset = PRESETS[args.preset]
        defaults = dict(defaults, **preset['cuda' if device.type == 'cuda' else 'cpu'])
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.compile_flag is not None:
        args.compile_modes = 'eager,compile' if args.compile_flag else 'eager'
    if args.amp_dtype is None:
        args.amp_dtype = 'bfloat16' if device.type == 'cuda' else 'float32'
    if args.amp_dtype not in AMP_DTYPES:
        raise SystemExit(f'--amp-dtype: choose from {sorted(AMP_DTYPES)}.')
    args.models = _csv(args.models, SIZES, '--models')
    args.variants = _csv(args.variants, VARIANTS, '--variants')
    args.modes = _csv(args.modes, PHASES, '--modes')
    args.compile_modes = _csv(args.compile_modes, COMPILE_MODES, '--compile-modes')
    args.expert_impl = _csv(args.expert_impl, EXPERT_IMPLS, '--expert-impl')
    args.moe_paths = _csv(args.moe_paths, MOE_PATHS, '--moe-paths')
    args.row_specs = None
    if args.preset:
        args.row_specs = [list(r) for r in PRESETS[args.preset]['rows']]
    try:
        args.experts = [int(e) for e in _csv(args.experts, flag='--experts')]
    except ValueError:
        raise SystemExit('--experts: give integers, e.g. 8,16,32,128.') from None
    for name in ('batch_size', 'img_size', 'steps', 'repeats'):
        if getattr(args, name) < 1:
            raise SystemExit(f'--{name.replace("_", "-")} must be >= 1.')
    if args.warmup < 0:
        raise SystemExit('--warmup must be >= 0.')
    if args.img_size % 16:
        raise SystemExit('--img-size must be a multiple of the patch size 16.')
    return args


# --- environment ---------------------------------------------------------------------------------
def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def _device_slug(device: torch.device) -> str:
    if device.type != 'cuda':
        return device.type
    return re.sub(r'[^a-z0-9]+', '-', _device_name(device).lower()).strip('-') or 'cuda'


def default_out(args: argparse.Namespace, device: torch.device) -> str:
    """Where the JSON goes: ``--out``; else a ``--quick`` smoke run writes under the git-ignored ``output/`` and a
    measurement to ``benchmarks/results/`` (where the committed results are)."""
    if args.out:
        return args.out
    if args.quick:
        return os.path.join(_ROOT, 'output', f'throughput-{_device_slug(device)}-quick.json')
    return os.path.join(_ROOT, 'benchmarks', 'results', f'throughput-{_device_slug(device)}.json')


def _git_rev() -> Optional[str]:
    try:
        rev = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=_ROOT,
                               capture_output=True, text=True, timeout=10)
        if rev.returncode:
            return None
        return rev.stdout.strip() + ('-dirty' if dirty.stdout.strip() else '')
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> Dict[str, object]:
    env = {
        'device_type': device.type,
        'device_name': _device_name(device),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'timm_tgr': timm_tgr.__version__,
        'python': platform.python_version(),
        'platform': platform.platform(),
        'git_rev': _git_rev(),
        'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
    }
    if device.type == 'cuda':
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   capability=list(torch.cuda.get_device_capability(device)))
    return env


def _rss_bytes() -> Optional[int]:
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return None


# --- timing --------------------------------------------------------------------------------------
class Bench:
    """Runs and times one row; keeps the settings every row shares."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == 'cuda'
        self.amp_dtype = AMP_DTYPES[args.amp_dtype]
        gen = torch.Generator().manual_seed(args.seed)
        self.x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen).to(self.device)
        self.y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(self.device)
        self.memory_metric = 'cuda_max_memory_allocated' if self.cuda else 'cpu_rss_delta'

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def clear(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        torch._dynamo.reset()  # fresh compile caches: no recompile limit hit, no cross-model reuse

    def time(self, step: Callable[[], None], rss_before: Optional[int]) -> Dict[str, object]:
        a = self.args
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            step()
        self.sync()
        warmup_s = time.perf_counter() - t0
        rates = []
        for _ in range(a.repeats):
            self.sync()
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            self.sync()
            rates.append(a.batch_size * a.steps / (time.perf_counter() - t0))
        ips = statistics.median(rates)
        if self.cuda:
            mem = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            rss = _rss_bytes()
            mem = (rss - rss_before) / 2 ** 20 if rss is not None and rss_before is not None else None
        return {
            'img_per_s': ips,
            'img_per_s_repeats': rates,
            'step_ms': 1e3 * a.batch_size / ips,
            'warmup_s': warmup_s,
            'mem_mb': mem,
            'mem_metric': self.memory_metric,
        }


def _set_expert_impl(model: nn.Module, impl: str) -> None:
    for m in model.modules():
        if isinstance(m, GroupedExperts):
            m.impl = impl


def _optimizer(params, args, device) -> torch.optim.Optimizer:
    kw = dict(lr=args.lr, weight_decay=0.05)
    if args.fused_adamw and device.type == 'cuda':
        kw['fused'] = True
    return torch.optim.AdamW([p for p in params if p.requires_grad], **kw)


def _teacher_name(args, size: str) -> str:
    if args.teacher == 'paper':
        return default_teacher(f'tgr_moe_deit_{size}').split('.')[0]
    return args.teacher


def _compile(fn, args):
    return torch.compile(fn, mode=args.compile_mode)


# --- rows ----------------------------------------------------------------------------------------
def _set_use_dropless(model: nn.Module, use: bool) -> None:
    for m in model.modules():
        if isinstance(m, SparseMoE):
            m.use_dropless = use


def _build_model(bench: Bench, size: str, variant: str, num_experts: Optional[int], impl: Optional[str],
                 path: Optional[str] = None):
    """``(name, module, teacher name)`` of one row: the dense DeiT, the V-MoE (upcycled or not), the TGR task or
    the teacher alone."""
    args, dev = bench.args, bench.device
    common = dict(img_size=args.img_size, num_classes=args.num_classes)
    moe_kw = dict(capacity_factor='dropless') if path == 'dropless' else {}
    teacher = None
    if variant == 'dense':
        name = f'deit_{size}_patch16_224'
        model = timm.create_model(name, **common).to(dev)
    elif variant == 'vmoe':
        name = f'vmoe_deit_{size}'
        model = timm.create_model(name, num_experts=num_experts, **moe_kw, **common).to(dev)
        _set_expert_impl(model, impl)
    elif variant == 'upcycled':
        name = f'vmoe_deit_{size}'
        dense = timm.create_model(f'deit_{size}_patch16_224', **common)
        model = timm.create_model(name, num_experts=num_experts, **common,
                                  eval_capacity_factor=upcycled_eval_capacity_factor(num_experts))
        model.load_state_dict(upcycle_dense_state_dict(dense.state_dict(), model))
        model = model.to(dev)
        _set_expert_impl(model, impl)
        _set_use_dropless(model, path == 'dropless')  # capacity: the C = S buffer upcycled models had before
    elif variant == 'tgr':
        name = f'tgr_moe_deit_{size}'
        student = timm.create_model(name, num_experts=num_experts, **moe_kw, **common).to(dev)
        _set_expert_impl(student, impl)
        teacher = _teacher_name(args, size)
        model = TGRTask(student, teacher_model=teacher, teacher_pretrained=False, device=dev, verbose=False).to(dev)
    elif variant == 'teacher':
        teacher = _teacher_name(args, size)
        name = teacher
        model = FeatureTeacher(build_teacher(teacher, pretrained=False, img_size=args.img_size),
                               blocks=PAPER_MOE_LAYERS, device=dev).to(dev)
    else:
        raise ValueError(variant)
    return name, model, teacher


def run_row(bench: Bench, size: str, variant: str, phase: str, compiled: bool,
            num_experts: Optional[int] = None, impl: Optional[str] = None,
            path: Optional[str] = None,
            after: Optional[Callable[[Dict[str, object], Callable[[], None]], None]] = None) -> Dict[str, object]:
    """Build and time one row. ``after(row, step)``, if given, is called once the row is timed, while its model and
    step still exist (e.g. to profile one more step without building or compiling again)."""
    args, dev = bench.args, bench.device
    bench.clear()
    torch.manual_seed(args.seed)
    rss_before = _rss_bytes()
    criterion = nn.CrossEntropyLoss()
    x, y = bench.x, bench.y
    if variant in ('vmoe', 'tgr', 'upcycled'):
        path = path or 'capacity'
    name, model, teacher = _build_model(bench, size, variant, num_experts, impl, path)

    if phase == 'train':
        if variant == 'dense':
            params = list(model.parameters())
            fwd = _compile(model, args) if compiled else model
            loss_fn = lambda: criterion(fwd(x), y)  # noqa: E731
        elif variant == 'vmoe':
            task = VMoETask(model, criterion=criterion, verbose=False)
            params = list(task.trainable_module.parameters())
            if compiled:
                task.compile(mode=args.compile_mode)
            loss_fn = lambda: task(x, y)['loss']  # noqa: E731
        elif variant == 'tgr':
            tgr_task = model
            params = list(tgr_task.trainable_module.parameters())
            if compiled:
                tgr_task.compile(mode=args.compile_mode)
            loss_fn = lambda: tgr_task(x, y)['loss']  # noqa: E731
        else:
            raise ValueError(f'{variant} has no train row')
        model.train()
        opt = _optimizer(params, args, dev)

        def step():
            with bench.autocast():
                loss = loss_fn()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()
        if variant == 'teacher':
            if compiled:
                model.compile(mode=args.compile_mode)
            fwd = model
        else:
            fwd = _compile(model, args) if compiled else model

        def step():
            with torch.no_grad(), bench.autocast():
                fwd(x)

    result = bench.time(step, rss_before)
    row = {
        'size': size, 'variant': variant, 'model': name, 'num_experts': num_experts, 'expert_impl': impl,
        'moe_path': path, 'teacher': teacher, 'phase': phase, 'compile': compiled, **result, 'ratio_to_dense': None,
    }
    if after is not None:
        after(row, step)
    del model, step
    bench.clear()
    return row


def _fmt_mem(mb: Optional[float]) -> str:
    return '-' if mb is None else f'{mb:.0f}'


def print_row(row: Dict[str, object]) -> None:
    ratio = row['ratio_to_dense']
    e = row['num_experts'] if row['num_experts'] is not None else '-'
    impl = row['expert_impl'] or '-'
    path = row.get('moe_path') or '-'
    print(f"{row['size']:>5} {row['variant']:>8} {str(e):>4} {impl:>10} {path:>8} {row['phase']:>5} "
          f"{'compile' if row['compile'] else 'eager':>7} {row['img_per_s']:>10.1f} {row['step_ms']:>10.2f} "
          f"{'-' if ratio is None else f'{ratio:.3f}':>8} {_fmt_mem(row['mem_mb']):>9}", flush=True)


def _header(bench: Bench) -> None:
    mem = 'peakMiB' if bench.cuda else 'RSSd MiB'
    print(f"{'size':>5} {'variant':>8} {'E':>4} {'impl':>10} {'path':>8} {'phase':>5} {'mode':>7} {'img/s':>10} "
          f"{'step ms':>10} {'x dense':>8} {mem:>9}", flush=True)


# --- goals ---------------------------------------------------------------------------------------
ROW_KEYS = ('size', 'variant', 'phase', 'num_experts', 'expert_impl', 'moe_path', 'compile')


def _find(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def row_key(row: Dict[str, object]) -> Dict[str, object]:
    """What identifies a row (``_find(rows, **row_key(row))`` finds it again)."""
    return {k: row.get(k) for k in ROW_KEYS}


def add_row(rows: List[Dict[str, object]], row: Dict[str, object]) -> Dict[str, object]:
    """Append ``row`` with its ratio to the dense row of the same size, phase and mode (img/s over dense img/s;
    1.0 for dense itself, None for the teacher or without a dense row)."""
    dense = _find(rows, variant='dense', size=row['size'], phase=row['phase'], compile=row['compile'])
    if row['variant'] == 'dense':
        row['ratio_to_dense'] = 1.0
    elif dense and row['variant'] in ('vmoe', 'tgr', 'upcycled'):
        row['ratio_to_dense'] = row['img_per_s'] / dense[0]['img_per_s']
    rows.append(row)
    return row


def tgr_overhead(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """t(TGR step) / (t(V-MoE step) + t(teacher forward)) for every measured TGR train row."""
    out = []
    for t in _find(rows, variant='tgr', phase='train'):
        v = _find(rows, variant='vmoe', phase='train', size=t['size'], num_experts=t['num_experts'],
                  expert_impl=t['expert_impl'], moe_path=t.get('moe_path'), compile=t['compile'])
        te = _find(rows, variant='teacher', phase='infer', size=t['size'], compile=t['compile'])
        if not v or not te:
            continue
        budget = v[0]['step_ms'] + te[0]['step_ms']
        out.append({
            'size': t['size'], 'num_experts': t['num_experts'], 'expert_impl': t['expert_impl'],
            'moe_path': t.get('moe_path'), 'compile': t['compile'], 'row': row_key(t), 'tgr_step_ms': t['step_ms'],
            'vmoe_step_ms': v[0]['step_ms'],
            'teacher_forward_ms': te[0]['step_ms'], 'ratio': t['step_ms'] / budget, 'goal_max': TGR_GOAL,
        })
    return out


def dropless_comparisons(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """The dropless targets' ratios: upcycled eval time / dense eval time (both MoE paths; the goal is on the
    dropless one), and dropless train step time / capacity-path train step time (same size, E, impl, mode)."""
    out = []
    for u in _find(rows, variant='upcycled', phase='infer'):
        d = _find(rows, variant='dense', phase='infer', size=u['size'], compile=u['compile'])
        if d:
            out.append({'kind': 'upcycled_eval_vs_dense', 'size': u['size'], 'num_experts': u['num_experts'],
                        'moe_path': u['moe_path'], 'compile': u['compile'], 'row': row_key(u), 'step_ms': u['step_ms'],
                        'baseline_step_ms': d[0]['step_ms'], 'ratio': u['step_ms'] / d[0]['step_ms'],
                        'goal_max': UPCYCLED_EVAL_GOAL if u['moe_path'] == 'dropless' else None})
    for r in [r for r in rows if r.get('moe_path') == 'dropless' and r['variant'] in ('vmoe', 'tgr')]:
        c = _find(rows, variant=r['variant'], phase=r['phase'], size=r['size'], num_experts=r['num_experts'],
                  expert_impl=r['expert_impl'], compile=r['compile'], moe_path='capacity')
        if c:
            out.append({'kind': f"dropless_vs_capacity_{r['variant']}_{r['phase']}", 'size': r['size'],
                        'num_experts': r['num_experts'], 'moe_path': 'dropless', 'compile': r['compile'],
                        'row': row_key(r), 'step_ms': r['step_ms'], 'baseline_step_ms': c[0]['step_ms'],
                        'ratio': r['step_ms'] / c[0]['step_ms'],
                        'goal_max': DROPLESS_TRAIN_GOAL if r['phase'] == 'train' else None})
    return out


def evaluate_goals(rows, overheads, on_cuda: bool, comparisons=()) -> List[Dict[str, object]]:
    """The GPU goals (judged on CUDA only) and the dropless targets of ``comparisons`` (judged on every device)."""
    goals = []

    def add(name, value, threshold, row, higher_is_better=True, any_device=False):
        ok, evaluated = None, on_cuda or any_device
        if evaluated and value is not None:
            ok = value >= threshold if higher_is_better else value <= threshold
        goals.append({'goal': name, 'value': value, 'threshold': threshold,
                      'direction': '>=' if higher_is_better else '<=', 'evaluated': evaluated, 'pass': ok,
                      'row': row})

    def impl(r):  # the dropless path runs the jagged grouped matmul whatever the capacity path's impl
        return 'dropless' if r.get('moe_path') == 'dropless' else r['expert_impl']

    for r in _find(rows, variant='vmoe', phase='train'):
        mode = 'compiled' if r['compile'] else 'eager'
        key = (r['size'], r['num_experts'])
        tag = f"vmoe_deit_{r['size']} E={r['num_experts']} [{impl(r)}] train {mode} / dense"
        if key in TRAIN_GOALS:
            add(tag, r['ratio_to_dense'], TRAIN_GOALS[key], row_key(r))
        if r['num_experts'] == 128:
            add(tag, r['ratio_to_dense'], TRAIN_GOAL_E128, row_key(r))
    for r in _find(rows, variant='vmoe', phase='infer'):
        if r['num_experts'] == PAPER_EXPERTS[r['size']]:
            mode = 'compiled' if r['compile'] else 'eager'
            add(f"vmoe_deit_{r['size']} E={r['num_experts']} [{impl(r)}] infer {mode} / dense",
                r['ratio_to_dense'], INFER_GOAL, row_key(r))
    for o in overheads:
        mode = 'compiled' if o['compile'] else 'eager'
        add(f"tgr_moe_deit_{o['size']} E={o['num_experts']} [{impl(o)}] {mode}: "
            f"TGR step / (V-MoE step + teacher fwd)", o['ratio'], TGR_GOAL, o.get('row'), higher_is_better=False)
    for c in comparisons:
        if c['goal_max'] is None:
            continue
        mode = 'compiled' if c['compile'] else 'eager'
        what = ('upcycled eval time / dense deit_{size}' if c['kind'] == 'upcycled_eval_vs_dense' else
                'dropless train step / capacity cf 1.05').format(size=c['size'])
        add(f"vmoe_deit_{c['size']} E={c['num_experts']} {mode}: {what}", c['ratio'], c['goal_max'], c.get('row'),
            higher_is_better=False, any_device=True)
    return goals


def print_goals(goals, on_cuda: bool) -> None:
    print()
    if on_cuda:
        print('Issue-6 goals (CUDA):')
    else:
        print('Goals (the GPU goals are not evaluated on CPU: their ratios are shown for information only; the '
              'dropless targets are judged on every device):')
    for g in goals:
        status = ('PASS' if g['pass'] else 'FAIL') if g['evaluated'] and g['pass'] is not None else 'n/a '
        val = '-' if g['value'] is None else f"{g['value']:.3f}"
        print(f"  [{status}] {g['goal']}: {val} (goal {g['direction']} {g['threshold']})")
    if not goals:
        print('  (no row that a goal refers to was measured)')


# --- main ----------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests)


def _setup_device(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def _run_rows(args: argparse.Namespace, bench: Bench) -> List[Dict[str, object]]:
    """Every row the flags ask for, printed as it comes, with its ratio to the dense row of the same setting."""
    rows: List[Dict[str, object]] = []

    def record(row):
        print_row(add_row(rows, row))

    if args.row_specs is not None:
        for mode in args.compile_modes:
            for size, variant, phase, e, path, where in args.row_specs:
                if where == 'cuda' and not bench.cuda:
                    print(f'  (GPU row, CUDA only: {size} {variant} E={e} {path} {phase} {mode})', flush=True)
                    continue
                impl = args.expert_impl[0] if e is not None else None
                record(run_row(bench, size, variant, phase, mode == 'compile', e, impl, path))
        return rows

    for size in args.models:
        for mode in args.compile_modes:
            compiled = mode == 'compile'
            for phase in args.modes:
                if 'dense' in args.variants:
                    record(run_row(bench, size, 'dense', phase, compiled))
                if phase == 'infer' and 'teacher' in args.variants:
                    record(run_row(bench, size, 'teacher', phase, compiled))
                for e in args.experts:
                    for impl in args.expert_impl:
                        for path in args.moe_paths:
                            if 'vmoe' in args.variants:
                                record(run_row(bench, size, 'vmoe', phase, compiled, e, impl, path))
                            if phase == 'train' and 'tgr' in args.variants:
                                record(run_row(bench, size, 'tgr', phase, compiled, e, impl, path))
                            if phase == 'infer' and 'upcycled' in args.variants:
                                record(run_row(bench, size, 'upcycled', phase, compiled, e, impl, path))
            if 'tgr' in args.variants and 'teacher' in args.variants and 'infer' not in args.modes:
                # the TGR goal needs the teacher forward even when only training is benchmarked
                record(run_row(bench, size, 'teacher', 'infer', compiled))
    return rows


def _print_overheads(overheads: List[Dict[str, object]]) -> None:
    if overheads:
        print('\nTGR overhead: t(TGR step) / (t(V-MoE step) + t(teacher fwd)), goal <= 1.05')
        for o in overheads:
            print(f"  {o['size']:>5} E={o['num_experts']:<4} {o['expert_impl']:>10} "
                  f"{'compile' if o['compile'] else 'eager':>7}: {o['tgr_step_ms']:.2f} / "
                  f"({o['vmoe_step_ms']:.2f} + {o['teacher_forward_ms']:.2f}) ms = {o['ratio']:.3f}")


def _print_comparisons(comparisons: List[Dict[str, object]]) -> None:
    if comparisons:
        print('\nDropless path: time ratios (step ms / baseline step ms)')
        for c in comparisons:
            goal = f" (goal <= {c['goal_max']})" if c['goal_max'] is not None else ''
            print(f"  {c['kind']:>36} {c['size']:>5} E={c['num_experts']:<4} {c['moe_path']:>8} "
                  f"{'compile' if c['compile'] else 'eager':>7}: {c['step_ms']:.2f} / {c['baseline_step_ms']:.2f} ms "
                  f"= {c['ratio']:.3f}{goal}")


def _run(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> Dict[str, object]:
    device = _setup_device(args)
    bench = Bench(args)
    env = environment(device)
    date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    print(f"# {env['device_name']} | torch {env['torch']} | timm {env['timm']} | {date}")
    print(f"# batch {args.batch_size}, img {args.img_size}, amp {args.amp_dtype}, steps {args.steps} x "
          f"{args.repeats} repeats (median), warmup {args.warmup}; memory: {bench.memory_metric}")
    _header(bench)
    rows = _run_rows(args, bench)
    overheads = tgr_overhead(rows)
    _print_overheads(overheads)
    comparisons = dropless_comparisons(rows)
    _print_comparisons(comparisons)
    goals = evaluate_goals(rows, overheads, bench.cuda, comparisons)
    print_goals(goals, bench.cuda)

    settings = {k: v for k, v in vars(args).items() if k not in ('out', 'compile_flag')}
    dropless_goals = [g for g in goals if g['evaluated'] and not bench.cuda]
    result = {
        'schema': SCHEMA,
        'date': date,
        'command': ' '.join([os.path.relpath(os.path.abspath(__file__), _ROOT)] +
                            list(sys.argv[1:] if argv is None else argv)),
        'environment': env,
        'settings': settings,
        'memory_metric': bench.memory_metric,
        'memory_note': ('torch.cuda.max_memory_allocated per row (MiB), reset before the row' if bench.cuda else
                        'CPU: process RSS growth (MiB) from before the model is built to after its timed runs; '
                        'not a peak; null if /proc/self/statm is unreadable'),
        'results': rows,
        'tgr_overhead': overheads,
        'dropless': comparisons,
        'goals': goals,
        'goals_evaluated': bench.cuda or bool(dropless_goals),
        'goals_note': None if bench.cuda else ('GPU goals, not evaluated on CPU' + (
            '; the dropless targets are evaluated on every device' if dropless_goals else '')),
    }
    out = default_out(args, device)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(result, f, indent=2, default=str)
        f.write('\n')
    print(f'\nwrote {out}')
    result['out'] = out
    return result


if __name__ == '__main__':
    main()
