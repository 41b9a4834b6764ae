"""Routing pictures during training (``--visualize-every N``): the same sheets as ``python -m timm_tgr.visualize``
for a fixed probe batch, written to ``<run>/visualize/epoch-<NNN>/`` every N epochs and after the last, so the
run folder shows routing settle.

The probe batch is ``--visualize-images`` images of the routing-consistency probe set (the first
``--probe-samples`` validation images; the validation loader does not shuffle): the first image of each class
in turn, then the second, ..., chosen once and kept for every epoch. The class-by-expert heatmaps and the teacher
agreement are counted over the whole probe set. Only the primary process draws; a missing matplotlib turns the
pictures off with one log line.
"""
import logging
from itertools import islice
from typing import Any, Dict, Optional

import torch
from timm.utils import unwrap_model

from ..visualize.writer import picture_epoch_dir
from .spec import RunFolderSpec

__all__ = ['RoutingPictures', 'picture_epoch_dir']

_logger = logging.getLogger(__name__)


class RoutingPictures:
    """Draws the routing pictures of a run's eval model at the epochs ``--visualize-every`` picks."""

    def __init__(self, every: int, num_images: int, num_epochs: int):
        self.every, self.num_images, self.num_epochs = every, num_images, num_epochs
        self.probe = None
        self.enabled = True

    @classmethod
    def create(cls, folder: RunFolderSpec, model, num_epochs: int) -> Optional['RoutingPictures']:
        """None unless ``--visualize-every`` > 0 and the model is a timm_tgr MoE model."""
        if not folder.visualize_every:
            return None
        if not hasattr(unwrap_model(model), 'routing_infos'):
            _logger.warning('--visualize-every draws MoE routing: the model has none, no pictures.')
            return None
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            _logger.warning('--visualize-every needs matplotlib (pip install "timm-tgr[plot]"): no pictures.')
            return None
        return cls(folder.visualize_every, folder.visualize_images, num_epochs)

    def due(self, epoch: int) -> bool:
        return self.enabled and ((epoch + 1) % self.every == 0 or epoch == self.num_epochs - 1)

    def _probe_images(self, batches):
        """Up to ``num_images`` images of the probe set: the first of each class in turn, then the second, ..."""
        from ..visualize import ProbeImages
        from ..visualize.writer import round_robin
        candidates, seen = [], 0  # (index, class, image), in index order
        for x, y in batches:
            y = (y.argmax(-1) if y.ndim > 1 else y).tolist()
            candidates += [(seen + k, int(t), x[k].detach().cpu()) for k, t in enumerate(y)]
            seen += len(y)
            # an image round_robin leaves out now stays out when later images come
            candidates = [candidates[k] for k in sorted(round_robin([c[1] for c in candidates], self.num_images))]
        chosen = [candidates[k] for k in round_robin([c[1] for c in candidates], self.num_images)]
        return ProbeImages(torch.stack([x for _, _, x in chosen]), [t for _, t, _ in chosen],
                           [f'validation-{i:05d}' for i, _, _ in chosen])

    def write(self, epoch: int, output_dir: str, model, task, loader, probe_batches: int, run_args: Dict[str, Any],
              device: torch.device) -> Dict[str, object]:
        """Write the epoch's pictures (``run_args``: the run's record, for the class names and the title); returns
        their summary (``routing.json``'s content, paths under 'files')."""
        from ..visualize import TeacherRouting, write_routing_pictures
        from ..visualize.load import class_names_for
        base = unwrap_model(model)
        if self.probe is None:
            self.probe = self._probe_images(islice(loader, max(probe_batches, 1)))
        cfg = base.pretrained_cfg
        out = picture_epoch_dir(output_dir, epoch)
        class_names = class_names_for(base, run_args, getattr(loader, 'dataset', None))
        summary = write_routing_pictures(
            model, out, self.probe, cfg['mean'], cfg['std'], class_names, base.num_classes,
            dataset_batches=islice(loader, max(probe_batches, 1)), dataset_name='the probe set',
            teacher=TeacherRouting.from_task(task), device=device, title=f'{run_args["model"]}, epoch {epoch}')
        _logger.info(f'routing pictures of epoch {epoch} in {out}')
        return summary
