"""Paired statistics of same-seed runs: a seed fixes a run's initial weights and data order, so the difference of
two variants at the same seed cancels what the seeds share. Student's t test on those differences, two-sided,
with the t distribution's CDF in closed form for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4):
no SciPy needed."""
import math
from typing import Dict, Optional

__all__ = ['t_two_sided_p', 'paired_diff', 'verdict', 'ALPHA']

ALPHA = 0.05  # "reproduces": the paper's direction and a paired p below this


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f'degrees of freedom must be >= 1, got {df}')
    if math.isinf(t):
        return 0.
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd: A = 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df - 3 in the last power
        term, total = 1., 1. if df > 1 else 0.
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        a = 2. / math.pi * (theta + s * math.cos(theta) * total)
    else:  # even: A = sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df - 2 in the last power
        term, total = 1., 1.
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    return min(1., max(0., 1. - a))


def paired_diff(a: Optional[Dict[int, float]], b: Optional[Dict[int, float]]) -> Optional[dict]:
    """a - b over the seeds both ran: mean difference, its standard error, the paired t test's p and n."""
    if not a or not b:
        return None
    seeds = sorted(s for s in set(a) & set(b) if _finite(a[s]) and _finite(b[s]))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    n, mean = len(d), sum(d) / len(d)
    if n < 2:
        return {'diff': mean, 'se': None, 'p': None, 'n': n, 'seeds': seeds}
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)
    p = (1. if mean == 0 else 0.) if se == 0 else t_two_sided_p(mean / se, n - 1)
    return {'diff': mean, 'se': se, 'p': p, 'n': n, 'seeds': seeds}


def verdict(paired: Optional[dict], direction: Optional[int]) -> str:
    """'reproduces' (the predicted direction, paired p < ALPHA), 'does not' (the opposite direction, p < ALPHA),
    'within noise' (p >= ALPHA), or '–' where no direction is predicted or no p can be computed."""
    if paired is None or paired.get('p') is None or direction is None:
        return '–'
    if paired['p'] >= ALPHA:
        return 'within noise'
    return 'reproduces' if (paired['diff'] > 0) == (direction > 0) else 'does not'


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
