"""DistillSchedule on its own: the adaptive rule (the 'first' schedule inside TGRTask is in test_tgr_task.py)."""
from timm_tgr.task.schedule import DistillSchedule


def test_adaptive_schedule_rule():
    s = DistillSchedule('adaptive', total_steps=100, delta=0.01, patience=2, min_fraction=0.1)
    s.step = 20
    for c in (0.3, 0.5, 0.6, 0.605):
        s.observe_consistency(c)
        assert s.active()
    s.observe_consistency(0.608)  # two gains below 0.01 in a row
    assert not s.active() and s.stopped_at == 20
    s2 = DistillSchedule('adaptive', total_steps=100)
    s2.step = 5  # before min_fraction nothing switches off
    for c in (0.5, 0.5, 0.5, 0.5):
        s2.observe_consistency(c)
    assert s2.active()
    assert not DistillSchedule('off').active() and DistillSchedule('full').active()
