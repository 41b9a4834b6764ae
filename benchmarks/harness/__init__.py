"""The machinery of the study scripts in ``benchmarks/`` (``reproduce.py``, ``transfer.py``, ``upcycle.py``).

- ``study``: what the Fashion-MNIST study compares (variants, tiers, the paper's numbers); runs nothing;
- ``plan``: a tier and the command line's overrides as ``train_tgr.py`` command lines;
- ``runner``: runs them (one after the other or ``--jobs N`` at once), resuming partial runs;
- ``estimate``: the time estimate printed before training;
- ``collect``: run folders to per-run and per-row statistics and the paper's findings;
- ``tables``: ``results.md`` / ``.csv`` / ``.json`` and the plots;
- ``export_check``: exports the best TGR student and re-evaluates it without a teacher;
- ``publish``: copies a study's results (not its run folders) into ``benchmarks/results/<name>/``;
- ``env`` / ``files``: the machine's description, JSON and metrics files.

The scripts are run as ``python benchmarks/<script>.py``, which puts ``benchmarks/`` on ``sys.path``.
"""
