"""Routing pictures of timm_tgr MoE models: ``python -m timm_tgr.visualize MODEL --images ... --out DIR``.

- :mod:`.routing`: what the pictures show, as tensors (one forward per batch, read from ``routing_infos()``):
  per image and MoE block the top-1 expert of every patch and whether capacity dropped it, the teacher
  router's top-1 expert, class-by-expert counts and teacher agreement over a dataset.
- :mod:`.plots`: the matplotlib figures, one fixed palette per expert count.
- :mod:`.writer`: the folder of PNGs and ``routing.json`` (also written by ``train_tgr.py --visualize-every``).
- :mod:`.load` / :mod:`.cli`: the model (checkpoint or timm name), its teacher, images and dataset.
"""
from .routing import (
    AgreementCounts, ClassExpertCounts, RoutingMaps, TeacherRouting, class_order, collect_routing, patch_grid,
    patch_tokens, routing_maps,
)
from .writer import ProbeImages, write_routing_pictures

__all__ = [
    'AgreementCounts', 'ClassExpertCounts', 'RoutingMaps', 'TeacherRouting', 'class_order', 'collect_routing',
    'patch_grid', 'patch_tokens', 'routing_maps', 'ProbeImages', 'write_routing_pictures',
]
