"""Write a folder of routing pictures for a model: the part ``python -m timm_tgr.visualize`` and
``train_tgr.py --visualize-every`` share.

Layout of the folder::

    sheets/<image>.png          every MoE block's top-1 expert per patch, one sheet per image
    agreement/<image>.png       with a teacher: student vs teacher-router expert per patch, and where they agree
    class_expert.png            per MoE block, the classes x experts share of patch tokens (all blocks)
    class_expert_block<i>.png   the same, one block (0-based index i) per file
    agreement.png               with a teacher: share of patches whose expert is the teacher router's, per block
    routing.json                the numbers behind the pictures
"""
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .routing import (
    AgreementCounts, ClassExpertCounts, RoutingMaps, TeacherRouting, class_order, collect_routing, routing_maps,
)

__all__ = [
    'ProbeImages', 'write_routing_pictures', 'image_title', 'safe_name', 'round_robin', 'picture_epoch_dir',
    'latest_class_expert_picture',
]

_logger = logging.getLogger(__name__)


@dataclass
class ProbeImages:
    """Images to draw one sheet each for: normalized model inputs ``[B, C, H, W]``, their classes (None where
    unknown) and file-name stems."""
    images: torch.Tensor
    targets: List[Optional[int]]
    names: List[str]


def picture_epoch_dir(run_dir: str, epoch: int) -> str:
    """Where ``train_tgr.py --visualize-every`` writes an epoch's pictures: ``<run>/visualize/epoch-<NNN>``."""
    return os.path.join(run_dir, 'visualize', f'epoch-{epoch:03d}')


def latest_class_expert_picture(run_dir: str, epoch: Optional[int] = None) -> Optional[Tuple[str, int]]:
    """(path, epoch) of a run's class-by-expert heatmap: ``epoch``'s if drawn, else the latest epoch's; None
    when the run drew none."""
    if epoch is not None:
        path = os.path.join(picture_epoch_dir(run_dir, epoch), 'class_expert.png')
        if os.path.isfile(path):
            return path, epoch
    root = os.path.join(run_dir, 'visualize')
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else ():
        path = os.path.join(root, name, 'class_expert.png')
        if re.fullmatch(r'epoch-\d+', name) and os.path.isfile(path):
            found.append((int(name.split('-')[1]), path))
    if not found:
        return None
    e, path = max(found)
    return path, e


def round_robin(targets: Sequence[int], n: int) -> List[int]:
    """Indices of ``n`` of the items with classes ``targets``: the first of each class (in class order), then the
    second of each, ... so a few sheets show as many classes as they can."""
    by_class: Dict[int, List[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    rounds = max((len(v) for v in by_class.values()), default=0)
    order = [by_class[c][r] for r in range(rounds) for c in sorted(by_class) if r < len(by_class[c])]
    return order[:n]


def safe_name(name: str) -> str:
    """A file-name stem: letters, digits, ``-``, ``_``, ``.``; anything else becomes ``_``."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'image'


def _class_name(class_names: Sequence[str], c: int) -> str:
    return class_names[c] if 0 <= c < len(class_names) else str(c)


def image_title(name: str, target: Optional[int], logits: torch.Tensor, class_names: Sequence[str]) -> str:
    """``name: class X, predicted Y (p %)`` (the class part only when known)."""
    prob = torch.softmax(logits.float(), -1)
    pred = int(prob.argmax())
    parts = [name + ':']
    if target is not None:
        parts.append(f'class {_class_name(class_names, target)},')
    parts.append(f'predicted {_class_name(class_names, pred)} ({100 * float(prob[pred]):.0f} %)')
    return ' '.join(parts)


def _probe_maps(model, probe: ProbeImages, teacher, device, batch_size: int = 64):
    """Routing maps of the probe images, batch by batch, concatenated."""
    return RoutingMaps.cat([routing_maps(model, probe.images[i:i + batch_size].to(device), teacher)
                            for i in range(0, probe.images.shape[0], batch_size)])


def write_routing_pictures(
        model: nn.Module,
        out_dir: str,
        probe: ProbeImages,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str],
        num_classes: int,
        dataset_batches: Optional[Iterable] = None,
        dataset_name: str = '',
        teacher: Optional[TeacherRouting] = None,
        device: Optional[torch.device] = None,
        max_samples: Optional[int] = None,
        title: str = '',
) -> Dict[str, object]:
    """Write the pictures (see the module docstring) for ``model`` to ``out_dir``; returns ``routing.json``'s
    content with the paths written under ``'files'``.

    Sheets are drawn for the ``probe`` images; the class-by-expert heatmaps and the per-block agreement are
    counted over ``dataset_batches`` (``(images, targets)``, up to ``max_samples`` images) or, without them,
    over the probe images whose class is known. ``mean`` / ``std`` undo the input normalization for display.
    """
    from . import plots
    device = device or next(model.parameters()).device
    os.makedirs(out_dir, exist_ok=True)
    files: Dict[str, object] = {'sheets': [], 'agreement_sheets': []}
    summary: Dict[str, object] = {'title': title, 'class_names': list(class_names)}

    maps = _probe_maps(model, probe, teacher, device) if probe.images.shape[0] else None
    if maps is not None:
        num_experts = maps.num_experts
        summary['blocks'] = maps.blocks
        summary['num_experts'] = num_experts
        summary['images'] = []
        for n, (name, target) in enumerate(zip(probe.names, probe.targets)):
            image = plots.display_image(probe.images[n], mean, std)
            head = image_title(name, target, maps.logits[n], class_names)
            stem = safe_name(name)
            expert = {b: maps.expert[b][n].numpy() for b in maps.blocks}
            kept = {b: maps.kept[b][n].numpy() for b in maps.blocks}
            path = os.path.join(out_dir, 'sheets', stem + '.png')
            os.makedirs(os.path.dirname(path), exist_ok=True)
            files['sheets'].append(plots.save_figure(plots.image_sheet(image, expert, kept, num_experts, head), path))
            entry = {'name': name, 'target': target, 'prediction': int(maps.logits[n].argmax()),
                     'expert': {str(b): e.tolist() for b, e in expert.items()},
                     'kept': {str(b): k.tolist() for b, k in kept.items()}}
            if maps.teacher_expert:
                teacher_expert = {b: maps.teacher_expert[b][n].numpy() for b in maps.blocks}
                entry['teacher_expert'] = {str(b): e.tolist() for b, e in teacher_expert.items()}
                path = os.path.join(out_dir, 'agreement', stem + '.png')
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fig = plots.agreement_sheet(image, expert, teacher_expert, num_experts, head)
                files['agreement_sheets'].append(plots.save_figure(fig, path))
            summary['images'].append(entry)

    counts, agreement, seen = _dataset_counts(
        model, probe, maps, dataset_batches, num_classes, teacher, device, max_samples)
    summary['dataset'] = {'name': dataset_name if dataset_batches is not None else 'the images with a known class',
                          'images': seen}
    if counts is not None and counts.counts:
        summary['class_expert'] = _write_class_expert(counts, class_names, out_dir, files, title, dataset_name, seen)
    if agreement.total:
        shares = agreement.shares()
        summary['agreement'] = {str(b): v for b, v in shares.items()}
        fig = plots.agreement_figure(shares, f'{title}: student vs teacher router ({seen} images)' if title else '')
        files['agreement'] = plots.save_figure(fig, os.path.join(out_dir, 'agreement.png'))
    summary['files'] = {k: ([os.path.relpath(p, out_dir) for p in v] if isinstance(v, list)
                            else os.path.relpath(v, out_dir)) for k, v in files.items()}
    with open(os.path.join(out_dir, 'routing.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    return summary


def _dataset_counts(model, probe: ProbeImages, maps, dataset_batches, num_classes: int, teacher, device,
                    max_samples: Optional[int]):
    """(ClassExpertCounts or None, AgreementCounts, images counted) over the dataset, else the known probe images."""
    if dataset_batches is not None:
        return collect_routing(model, dataset_batches, num_classes, teacher, device=device, max_samples=max_samples)
    agreement = AgreementCounts()
    if maps is None:
        return None, agreement, 0
    agreement.update(maps)
    known = [n for n, t in enumerate(probe.targets) if t is not None]
    if not known:
        return None, agreement, probe.images.shape[0]
    counts = ClassExpertCounts(num_classes, maps.num_experts)
    counts.update(maps.select(torch.tensor(known)), torch.tensor([probe.targets[n] for n in known]))
    return counts, agreement, probe.images.shape[0]


def _write_class_expert(counts: ClassExpertCounts, class_names: Sequence[str], out_dir: str, files: dict,
                        title: str, dataset_name: str, seen: int) -> dict:
    """The heatmaps (all blocks, and one file per block); their numbers for routing.json."""
    from . import plots
    blocks = sorted(counts.counts)
    shares = {b: counts.shares(b).numpy() for b in blocks}
    tokens = {b: counts.tokens(b).numpy() for b in blocks}
    orders = {b: class_order(counts.shares(b), [t > 0 for t in tokens[b]]) for b in blocks}
    what = f'{seen} images' + (f' of {dataset_name}' if dataset_name else '')
    head = f"{title + ': ' if title else ''}share of each class's patch tokens per top-1 expert ({what})"
    files['class_expert'] = plots.save_figure(
        plots.class_expert_figure(shares, orders, class_names, tokens, head), os.path.join(out_dir, 'class_expert.png'))
    files['class_expert_blocks'] = []
    for b in blocks:
        fig = plots.class_expert_figure({b: shares[b]}, {b: orders[b]}, class_names, tokens, head)
        files['class_expert_blocks'].append(
            plots.save_figure(fig, os.path.join(out_dir, f'class_expert_block{b}.png')))
    return {str(b): {'order': orders[b], 'shares': shares[b].tolist(), 'tokens': tokens[b].tolist(),
                     'counts': counts.counts[b].tolist()} for b in blocks}
