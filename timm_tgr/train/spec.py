"""The run a train_tgr.py command describes, resolved once (:func:`resolve_run`) into typed sections that the rest
of the trainer reads: data, augmentation, model, guidance, optimization, run folder and runtime.

Resolving fills in what the flags leave open, each in one place: the dataset's defaults (Fashion-MNIST's channels,
classes, size and normalization), the architecture and create_model kwargs of the model (also of an ``hf-hub:`` /
``local-dir:`` name), the teacher (the paper's for ``tgr_moe_*`` models), the device and process group. The parsed
flags are never written to. :meth:`RunSpec.record` is what ``args.yaml`` and a checkpoint's ``args`` hold: the flags
with those resolved values (:data:`~timm_tgr.train.args.RESOLVED`), the same keys as ever.
"""
import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch
from timm.utils.distributed import init_distributed_device_so

from ..data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from ..data.fashion_mnist import FASHION_MNIST_NAMES
from ..task import default_teacher
from ..task.options import GuidanceConfig, no_teacher
from ..task.teacher import teacher_fixes
from .args import guidance_from_flags
from .finetune import model_source

__all__ = [
    'DataSpec', 'AugmentSpec', 'ModelSpec', 'GuidanceSpec', 'OptimSpec', 'RunFolderSpec', 'Runtime', 'LoopSpec',
    'RunSpec', 'resolve_run', 'dataset_defaults', 'flag_model_kwargs', 'TRAIN_TGR_TEACHER_FIXES',
]


def _section(cls, values: Mapping[str, Any], **resolved):
    """Section ``cls`` with each field the flag of its name, or the ``resolved`` value of that name."""
    return cls(**{f.name: resolved[f.name] if f.name in resolved else values[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class DataSpec:
    """Where the images come from, how they are normalized and batched (``prefetcher``: timm's CUDA one is on)."""
    dataset: str
    data_dir: str
    train_split: str
    val_split: str
    dataset_download: bool
    class_map: str
    device_data: bool
    mean: Optional[List[float]]
    std: Optional[List[float]]
    crop_pct: Optional[float]
    interpolation: str
    batch_size: int
    validation_batch_size: Optional[int]
    workers: int
    pin_mem: bool
    prefetcher: bool

    @property
    def eval_batch_size(self) -> int:
        return self.validation_batch_size or self.batch_size


@dataclass(frozen=True)
class AugmentSpec:
    """Training augmentation, mixup / cutmix and label smoothing (timm's flags)."""
    no_aug: bool
    scale: List[float]
    ratio: List[float]
    hflip: float
    vflip: float
    color_jitter: Optional[float]
    aa: Optional[str]
    reprob: float
    remode: str
    recount: int
    mixup: float
    cutmix: float
    cutmix_minmax: Optional[List[float]]
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    mixup_off_epoch: int
    smoothing: float
    train_interpolation: str


@dataclass(frozen=True)
class ModelSpec:
    """The student: ``model`` as given, its architecture ``model_arch`` and every create_model kwarg that rebuilds it
    (``model_kwargs_resolved``: an ``hf-hub:`` / ``local-dir:`` config's, then the flags'), its starting weights."""
    model: str
    model_arch: str
    model_kwargs: Dict[str, Any]
    model_kwargs_resolved: Dict[str, Any]
    num_classes: Optional[int]
    img_size: Optional[int]
    in_chans: Optional[int]
    drop: float
    drop_path: Optional[float]
    pretrained: bool
    initial_checkpoint: str
    upcycle_from: str
    reset_classifier: bool
    trust_checkpoint: bool
    grad_checkpointing: bool
    torchcompile: Optional[str]
    model_ema: bool
    model_ema_decay: float
    model_ema_warmup: bool

    @property
    def flag_kwargs(self) -> Dict[str, Any]:
        """The create_model kwargs the flags give (the source's config adds the rest)."""
        return flag_model_kwargs(self)

    @property
    def weights_loaded(self) -> bool:
        """Whether it starts from trained weights (``--pretrained`` or ``--initial-checkpoint``)."""
        return bool(self.pretrained or self.initial_checkpoint)


@dataclass(frozen=True)
class GuidanceSpec:
    """Teacher-guided routing (``config`` None without teacher; its ``total_steps`` is counted once the loaders
    are built), the StableMoE router freeze and the routing-consistency probe set."""
    teacher: Optional[str]
    config: Optional[GuidanceConfig]
    freeze_router_at: Optional[float]
    probe_samples: int
    consistency_pretrained: str


@dataclass(frozen=True)
class OptimSpec:
    """timm's optimizer and lr schedule flags, gradient accumulation and clipping, AMP (read by timm's
    ``optimizer_kwargs`` / ``scheduler_kwargs`` by name)."""
    opt: str
    opt_eps: Optional[float]
    opt_betas: Optional[List[float]]
    momentum: float
    weight_decay: float
    clip_grad: Optional[float]
    clip_mode: str
    layer_decay: Optional[float]
    opt_kwargs: Dict[str, Any]
    sched: str
    sched_on_updates: bool
    lr: float
    warmup_lr: float
    min_lr: float
    epochs: int
    warmup_epochs: int
    warmup_prefix: bool
    cooldown_epochs: int
    decay_epochs: float
    decay_rate: float
    patience_epochs: int
    lr_cycle_mul: float
    lr_cycle_decay: float
    lr_cycle_limit: int
    lr_k_decay: float
    lr_noise: Optional[List[float]]
    lr_noise_pct: float
    lr_noise_std: float
    grad_accum_steps: int
    amp: bool
    amp_dtype: str


@dataclass(frozen=True)
class RunFolderSpec:
    """Where the run is written and what it continues, its checkpoints, and what watches it."""
    output: str
    experiment: str
    resume: str
    no_resume_opt: bool
    checkpoint_hist: int
    eval_metric: str
    no_plot: bool
    visualize_every: int
    visualize_images: int
    log_wandb: bool
    wandb_project: Optional[str]
    wandb_tags: List[str]
    wandb_resume_id: str


@dataclass(frozen=True)
class Runtime:
    """This process: its device (``device_name`` as given to torch) and place in the process group, the seed,
    threads and logging."""
    device: torch.device
    device_name: str
    distributed: bool
    world_size: int
    rank: int
    local_rank: int
    seed: int
    threads: Optional[int]
    log_interval: int
    no_progress: bool


@dataclass(frozen=True)
class LoopSpec:
    """What :func:`~timm_tgr.train.loop.train_one_epoch` and :func:`~timm_tgr.train.loop.validate` read."""
    grad_accum_steps: int
    clip_grad: Optional[float]
    clip_mode: str
    mixup_off_epoch: int
    log_interval: int
    no_progress: bool
    distributed: bool
    world_size: int
    rank: int


@dataclass(frozen=True)
class RunSpec:
    """A train_tgr.py run, resolved once; ``flags`` the command's (the dataset's defaults filled in)."""
    data: DataSpec
    augment: AugmentSpec
    model: ModelSpec
    guidance: GuidanceSpec
    optim: OptimSpec
    run: RunFolderSpec
    runtime: Runtime
    flags: Mapping[str, Any] = field(repr=False)

    @property
    def loop(self) -> LoopSpec:
        return LoopSpec(
            grad_accum_steps=self.optim.grad_accum_steps, clip_grad=self.optim.clip_grad,
            clip_mode=self.optim.clip_mode, mixup_off_epoch=self.augment.mixup_off_epoch,
            log_interval=self.runtime.log_interval, no_progress=self.runtime.no_progress,
            distributed=self.runtime.distributed, world_size=self.runtime.world_size, rank=self.runtime.rank)

    @property
    def rank(self) -> int:
        """For timm's ``is_primary(spec)``."""
        return self.runtime.rank

    def record(self) -> Dict[str, Any]:
        """``args.yaml`` / a checkpoint's ``args``: the flags, the resolved model and teacher, how this process ran."""
        rt = self.runtime
        return dict(self.flags, device=rt.device_name, distributed=rt.distributed, world_size=rt.world_size,
                    rank=rt.rank, local_rank=rt.local_rank, prefetcher=self.data.prefetcher,
                    model_arch=self.model.model_arch, model_kwargs_resolved=dict(self.model.model_kwargs_resolved),
                    teacher_resolved=self.guidance.teacher)


def dataset_defaults(flags: Mapping[str, Any]) -> Dict[str, Any]:
    """The flags a dataset fills in where they are not given: Fashion-MNIST's 1 channel, 10 classes, 28x28, its own
    mean/std and no eval crop (timm's default would crop 28 out of 32)."""
    if str(flags['dataset']).lower() not in FASHION_MNIST_NAMES:
        return {}
    given = flags['model_kwargs']
    out = dict(mean=list(FASHION_MNIST_MEAN), std=list(FASHION_MNIST_STD), crop_pct=1.0)
    out = {k: v for k, v in out.items() if flags[k] is None}
    out.update({k: v for k, v in (('in_chans', 1), ('num_classes', 10), ('img_size', 28))
                if flags[k] is None and k not in given})
    return out


def flag_model_kwargs(flags) -> Dict[str, Any]:
    """create_model kwargs from the flags (``flags``: a :class:`ModelSpec` or the parsed flags)."""
    kw = dict(flags.model_kwargs)
    for key in ('num_classes', 'img_size', 'in_chans'):
        if getattr(flags, key) is not None:
            kw[key] = getattr(flags, key)
    if flags.drop:
        kw['drop_rate'] = flags.drop
    if flags.drop_path is not None:
        kw['drop_path_rate'] = flags.drop_path
    return kw


# the fixes of teacher errors (keys of timm_tgr.task.teacher.TEACHER_FIXES) in train_tgr.py's flags
TRAIN_TGR_TEACHER_FIXES = dict(
    name='pass --teacher NAME (e.g. --teacher {teacher}), or --teacher none to train without one',
    norm='pass --teacher-kwargs mean=M std=S (the values the teacher was trained with, e.g. mean=0.286 std=0.353 '
         'for Fashion-MNIST)',
    weights='pass --teacher-checkpoint FILE (e.g. model_best.pth.tar of a train_tgr.py run of the teacher), or '
            '--no-teacher-pretrained for a random teacher (debugging only)',
    grid='pass --teacher-kwargs img_size={img_size}',
)


def resolve_teacher(flags: Mapping[str, Any], arch: str) -> Optional[str]:
    """The teacher's name: --teacher, else the paper's for ``tgr_*`` models; None for 'none' or no teacher."""
    teacher = flags['teacher']
    if no_teacher(teacher):
        return None
    if teacher is None and arch.startswith('tgr_'):
        with teacher_fixes(TRAIN_TGR_TEACHER_FIXES):
            teacher = default_teacher(arch)
    if teacher is None and flags['teacher_routers_from']:
        raise ValueError(f'--teacher-routers-from continues teacher-guided routing, but {flags["model"]!r} trains '
                         f'without a teacher: pass --teacher NAME (with its --teacher-checkpoint / --teacher-kwargs).')
    return teacher


def _guidance(flags: Mapping[str, Any], arch: str) -> GuidanceSpec:
    """The teacher and the GuidanceConfig of the flags (None without teacher), the freeze and the probe set."""
    teacher = resolve_teacher(flags, arch)
    config = None
    if teacher is not None:
        if flags['distill_schedule'] == 'adaptive' and flags['probe_samples'] <= 0:
            raise ValueError('--distill-schedule adaptive watches probe-set consistency: set --probe-samples > 0')
        config = guidance_from_flags(argparse.Namespace(**flags), teacher=teacher,
                                     trust_checkpoint=flags['trust_checkpoint'])
    return _section(GuidanceSpec, flags, teacher=teacher, config=config)


def _runtime(flags: Mapping[str, Any]) -> Runtime:
    """This process's device and process group (timm's ``init_distributed_device``, which starts the group)."""
    dist = init_distributed_device_so(flags['device'], flags['dist_backend'], flags['dist_url'])
    return _section(Runtime, flags, device=torch.device(dist['device']), device_name=dist['device'],
                    distributed=dist['distributed'], world_size=dist['world_size'], rank=dist['global_rank'],
                    local_rank=dist['local_rank'])


def resolve_run(args: argparse.Namespace) -> RunSpec:
    """The run of parsed train_tgr.py flags ``args`` (see the module docstring); ``args`` is left as it is."""
    runtime = _runtime(vars(args))
    flags = dict(vars(args))
    flags.update(dataset_defaults(flags))
    arch, source_kwargs = model_source(flags['model'])
    model = _section(ModelSpec, flags, model_arch=arch, model_kwargs_resolved={})
    model = dataclasses.replace(model, model_kwargs_resolved={**source_kwargs, **model.flag_kwargs})  # flags win
    prefetcher = runtime.device.type == 'cuda' and not flags['no_prefetcher'] and not flags['device_data']
    return RunSpec(
        data=_section(DataSpec, flags, prefetcher=prefetcher), augment=_section(AugmentSpec, flags), model=model,
        guidance=_guidance(flags, arch), optim=_section(OptimSpec, flags), run=_section(RunFolderSpec, flags),
        runtime=runtime, flags=flags)
