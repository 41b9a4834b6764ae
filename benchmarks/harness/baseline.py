"""Rows taken from another study instead of trained again.

A study that changes only the teacher (cpu-teacher) compares its TGR rows with the dense, V-MoE and untrained-teacher
rows of an earlier study on the same student recipe and seeds. Retraining them would give the same runs (same seed:
same initial weights and data order), so their summaries are read from that study's ``results.json``, checked to be
the same recipe, and marked with where they come from.
"""
import os
from typing import List, Sequence, Tuple

from .files import read_json
from .runner import ROOT

# settings that must agree for a row of one study to stand beside the rows of another
SAME_STUDENT = ('recipe', 'student_config', 'epochs', 'student_model_kwargs', 'main_experts', 'synthetic_data',
                'quick', 'extra', 'stablemoe_freeze_at')
# variants whose runs build a teacher: they also need the same teacher architecture
TEACHER_ARCH = ('teacher_model_kwargs', 'teacher_kwargs')
NO_TEACHER = ('dense', 'vmoe', 'stablemoe', 'soft_moe', 'expert_choice')


def _results_path(study: str) -> str:
    path = study if study.endswith('.json') else os.path.join(study, 'results.json')
    if not os.path.isfile(path):
        raise SystemExit(f'--baseline-study {study}: no results.json there (give a published study folder such as '
                         f'benchmarks/results/cpu_recipe, or its results.json)')
    return path


def _mismatch(ours: dict, theirs: dict, keys: Sequence[str]) -> List[str]:
    return [f'{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here' for k in keys if ours.get(k) != theirs.get(k)]


def baseline_runs(study: str, variants: Sequence[str], settings: dict, own_runs: List[dict]) -> Tuple[List[dict], dict]:
    """The run summaries of ``variants`` in ``study`` (each with ``source``), and what the report records about it.

    Stops with the reason when the recipes differ, a seed of this study is missing there, or a variant is also
    trained here (one row must not mix two studies)."""
    path = _results_path(study)
    data = read_json(path)
    theirs = data['settings']
    keys = SAME_STUDENT + (TEACHER_ARCH if any(v not in NO_TEACHER for v in variants) else ())
    problems = _mismatch(settings, theirs, keys)
    both = sorted({r['variant'] for r in own_runs} & set(variants))
    if both:
        problems.append(f'variants trained in both studies: {both}')
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    runs = [dict(r, source=name) for r in data['runs']
            if r['kind'] == 'student' and r['variant'] in variants and r['seed'] in settings['seeds']]
    for variant in variants:
        seeds = {r['seed'] for r in runs if r['variant'] == variant and r['complete']}
        missing = sorted(set(settings['seeds']) - seeds)
        if missing:
            problems.append(f'{variant}: no complete run for seeds {missing} there')
    if problems:
        raise SystemExit(f'--baseline-study {study} cannot supply {list(variants)} to this study: '
                         + '; '.join(problems) + '. Train those rows here instead (--variants).')
    gits = sorted({inv.get('git') for inv in data.get('environment', {}).get('invocations', []) if inv.get('git')})
    record = {'study': name, 'path': os.path.relpath(os.path.abspath(path), ROOT), 'variants': list(variants),
              'git': gits, 'runs': sorted(r['name'] for r in runs)}
    return runs, record
