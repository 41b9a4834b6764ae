"""The one definition of every teacher-guided-routing option: the fields of :class:`GuidanceConfig`.

Each field declares its name, type and default, and in :func:`option` its help, its role in a run's record
(:data:`ROLES`), the paper's symbol, its range or choices. Read from here: train_tgr.py's flags
(``timm_tgr.train.args``), the ``tgr_*`` model kwargs of timm's train.py (:mod:`~timm_tgr.task.timm_train`) and
:class:`~timm_tgr.task.tgr_task.TGRTask`'s checks. A help text names another option as ``{field}``, which each
entry point spells its own way (:func:`option_help`).
"""
import functools
import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from numbers import Real
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

__all__ = ['TGR_MODES', 'MODEL', 'RUN', 'RECIPE', 'RECORDED', 'NEUTRAL', 'RUN_FOLDER', 'ROLES', 'Option', 'option',
           'GuidanceConfig', 'guidance_options', 'paper_value', 'option_help', 'option_types', 'check_option',
           'describe_range', 'no_teacher']

TGR_MODES = ('tgr', 'distill_only', 'teacher_route')

# the one role of an option (and of a train_tgr.py flag) in a run's record, args.yaml and a checkpoint's args
MODEL = 'model'  # the student's architecture: a resume must repeat it
RUN = 'run'  # what a checkpoint's task or optimizer state belongs to: a resume must repeat it; in the model card
RECIPE = 'recipe'  # how the run trains, in the model card; a resume may change it (args.yaml keeps both)
RECORDED = 'recorded'  # kept in the record, not in the model card; a resume may change it (args.yaml keeps both)
NEUTRAL = 'neutral'  # changes nothing the run computes (this machine's paths, threads, logging): not compared
RUN_FOLDER = 'run-folder'  # where the run is written or what it continues from: not compared
ROLES = (MODEL, RUN, RECIPE, RECORDED, NEUTRAL, RUN_FOLDER)


@dataclass(frozen=True)
class Option:
    """What a :class:`GuidanceConfig` field means: help (``{field}`` names another option; a bool's says what its
    other value does), its role in a run's record, the paper's symbol and where the paper defines it, the closed
    range ``[low, high]`` of a number or the choices of a string, whether it is a file path, its usage name
    (``metavar``), whether timm's train.py takes it as a ``tgr_*`` model kwarg, and the paper's value where the
    default (None) stands for it."""
    help: str
    role: Optional[str]
    symbol: str = ''
    source: str = ''
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Tuple[str, ...] = ()
    path: bool = False
    metavar: Optional[str] = None
    kwarg: bool = True
    paper: Any = None


def option(default: Any, help: str, role: Optional[str], **meaning: Any) -> Any:
    """A :class:`GuidanceConfig` field with ``default`` and its :class:`Option` (``role``: one of :data:`ROLES`, or
    None for an option the trainer counts and does not record)."""
    meta = {'option': Option(help=help, role=role, **meaning)}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class GuidanceConfig:
    """Teacher-guided routing of one run (TGR-MoE, arXiv 2604.21330, Sec. 3): one field per option.

    ``teacher`` ... ``teacher_pretrained``, ``trust_checkpoint`` build the teacher
    (:func:`~timm_tgr.task.teacher.build_teacher`); ``teacher_routers`` starts its routers from a TGR run's
    checkpoint; the others are :class:`~timm_tgr.task.tgr_task.TGRTask`'s arguments. Every value is checked here
    (:func:`check_option`), so a bad one fails naming its field before anything is built.
    """
    teacher: Optional[str] = option(
        None, "dense teacher (timm name, local-dir:/hf-hub:). Default: the paper's DeiT-III for tgr_moe_* models, "
              "none for others; 'none' trains without guidance", role=RUN, symbol='h_t', source='Sec. 3.1, Table S1',
        metavar='NAME')
    teacher_checkpoint: Optional[str] = option(
        None, 'teacher weights (e.g. a train_tgr.py checkpoint of the dense teacher)', role=NEUTRAL, path=True)
    teacher_kwargs: Dict[str, Any] = option(
        {}, 'timm.create_model kwargs of the teacher (e.g. embed_dim=96 patch_size=7)', role=RUN)
    teacher_pretrained: bool = option(
        True, 'random teacher weights when no {teacher_checkpoint} (debugging only)', role=RECIPE)
    mode: str = option(
        'tgr', 'tgr (the method), distill_only (router learns only from the teacher), teacher_route (upper bound: '
               'teacher router routes)', role=RUN, source='Table 5; teacher_route: Eq. S1-S3', choices=TGR_MODES)
    distill_weight: float = option(
        5.0, 'lambda_distill (paper: {default})', role=RECIPE, symbol='lambda_distill', source='L_student, Table S1',
        low=0.)
    teacher_load_weight: float = option(
        0.005, 'lambda_load of the teacher router', role=RECIPE, symbol='lambda_load', source='L_teacher, Table S1',
        low=0.)
    teacher_entropy_weight: Optional[float] = option(
        None, 'lambda_ent of the teacher router (default {paper}; 0 in teacher_route mode)', role=RECIPE,
        symbol='lambda_ent', source='L_teacher, Table S1', low=0., paper=0.005)
    schedule: str = option(
        'full', 'when distillation is on: full, first ({distill_fraction} of training), off, adaptive', role=RECIPE,
        source='distillation-timing ablation', choices=('full', 'first', 'off', 'adaptive'))
    distill_fraction: float = option(
        0.5, 'fraction for {schedule} first', role=RECIPE, source='distillation-timing ablation', low=0., high=1.)
    layer_map: Union[str, Mapping[int, int], None] = option(
        'aligned', 'teacher block per student MoE block: same depth (aligned) or the last block', role=RUN,
        source='teacher-layer ablation', choices=('aligned', 'last'))
    teacher_routers: Optional[str] = option(
        None, "start the teacher routers from this TGR run's checkpoint (its task_state; same expert count and "
              'teacher width) instead of fresh ones, e.g. to continue TGR while fine-tuning', role=RECORDED,
        symbol='R_t', source='Sec. 3.2', path=True)
    trust_checkpoint: bool = option(
        False, 'read {teacher_checkpoint} and {teacher_routers} with torch.load(weights_only=False), which can run '
               'code stored in the file: only for checkpoints you made yourself', role=NEUTRAL, kwarg=False)
    total_steps: Optional[int] = option(
        None, 'training forwards (micro-batches) of the whole run, for {schedule} first', role=None, low=1)

    def __post_init__(self):
        for f in fields(self):
            check_option(f.name, getattr(self, f.name))

    @property
    def guided(self) -> bool:
        """False for ``teacher='none'``: train without teacher guidance."""
        return not no_teacher(self.teacher)


def no_teacher(teacher: Any) -> bool:
    """Whether a ``teacher`` option says to train without one (``'none'``, any case)."""
    return isinstance(teacher, str) and teacher.lower() == 'none'


@functools.lru_cache(maxsize=None)
def guidance_options() -> Dict[str, Tuple[Any, Any, Option]]:
    """Every option in declaration order: ``{name: (type, default, Option)}``."""
    hints = typing.get_type_hints(GuidanceConfig)
    return {f.name: (hints[f.name], f.default if f.default is not MISSING else f.default_factory(),
                     f.metadata['option']) for f in fields(GuidanceConfig)}


def paper_value(name: str) -> Any:
    """The paper's value of option ``name``: its default, or the value a None default stands for."""
    _, default, meaning = guidance_options()[name]
    return meaning.paper if meaning.paper is not None else default


def option_help(name: str, spell: Callable[[str], str]) -> str:
    """The help of option ``name``, naming every option as ``spell(field)`` (an entry point's flag or kwarg)."""
    options = guidance_options()
    _, default, meaning = options[name]
    return meaning.help.format(default=default, paper=meaning.paper, **{n: spell(n) for n in options})


_NAMES = {float: (int, float), int: (int,), str: (str,), bool: (bool,), dict: (dict,)}


def option_types(name: str) -> Tuple[type, ...]:
    """The types a value of option ``name`` may have (None aside): float takes ints, a mapping is a dict."""
    kind = guidance_options()[name][0]
    out = []
    for t in (typing.get_args(kind) if typing.get_origin(kind) is Union else (kind,)):
        t = typing.get_origin(t) or t
        t = dict if t in (dict, Mapping, typing.Mapping) or (isinstance(t, type) and issubclass(t, Mapping)) else t
        out += [u for u in _NAMES.get(t, ()) if u not in out]
    return tuple(out)


def describe_range(low: Optional[float], high: Optional[float]) -> str:
    """``'>= 0'``, ``'in [0, 1]'``, ``'<= 1'``: the closed range of a number."""
    if low is not None and high is not None:
        return f'in [{low:g}, {high:g}]'
    return f'>= {low:g}' if low is not None else f'<= {high:g}'


def check_option(name: str, value: Any, spelled: Optional[str] = None, fix: str = '') -> Any:
    """``value`` if it fits option ``name`` (type, range, choices); else a TypeError or ValueError naming it as
    ``spelled`` (default: the field name), ending with ``fix``."""
    spelled = spelled or name
    kind, _, meaning = guidance_options()[name]
    types = option_types(name)
    if value is None and type(None) in typing.get_args(kind):
        return value
    if not isinstance(value, types):
        raise TypeError(f'{spelled}={value!r} must be {" or ".join(t.__name__ for t in types)}.{fix}')
    if meaning.choices and isinstance(value, str) and value not in meaning.choices:
        raise ValueError(f'{spelled} must be one of {", ".join(meaning.choices)}, got {value!r}.{fix}')
    if isinstance(value, Real) and (meaning.low is not None or meaning.high is not None):
        below = meaning.low is not None and not value >= meaning.low
        above = meaning.high is not None and not value <= meaning.high
        if below or above or not math.isfinite(value):
            symbol = f' ({meaning.symbol})' if meaning.symbol else ''
            raise ValueError(f'{spelled} must be {describe_range(meaning.low, meaning.high)} and finite{symbol}, '
                             f'got {value!r}.{fix}')
    return value
