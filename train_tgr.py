#!/usr/bin/env python3
"""Train V-MoE / TGR-MoE models with timm: ``python train_tgr.py --help``.

The trainer lives in :mod:`timm_tgr.train` (also installed as the ``timm-tgr-train`` command).
"""
from timm_tgr.train import cli

if __name__ == '__main__':
    cli()
