"""The plugin for pytorch-image-models' ``train.py``: ``python train.py --device-modules timm_tgr.timm_train_hook``.

train.py imports every ``--device-modules`` module in its ``main()`` before it creates its training task. Importing
this module registers the models (``import timm_tgr``) and swaps the task classes in train.py's namespace for
MoE-aware ones (:func:`timm_tgr.task.timm_train.install`: MoE losses for our MoE models, teacher-guided routing for
``tgr_moe_*`` models, timm's tasks unchanged for dense models). Imported anywhere else (``__main__`` is not timm's
train.py) it changes nothing and logs a warning that says so.

``import timm_tgr`` alone only registers the models. The older spelling ``--device-modules timm_tgr`` still
installs the tasks, with a deprecation warning, in 0.1.x; it will only register the models from 0.2.
"""
import logging

import timm_tgr  # noqa: F401  (registers the models)
from timm_tgr.task.timm_train import install_into_timm_train

_logger = logging.getLogger(__name__)

installed = install_into_timm_train()
if not installed:
    _logger.warning('timm_tgr.timm_train_hook: __main__ is not timm\'s train.py, so no training task was changed '
                    '(the hook is for "python train.py --device-modules timm_tgr.timm_train_hook ...").')
