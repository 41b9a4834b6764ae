"""Token dispatch pieces (layers/dispatch.py) on small examples worked out by hand."""
import pytest
import torch

from timm_tgr.layers.dispatch import (
    assign_slots, capacity_groups, check_capacity, combine_outputs, dispatch_tokens, expert_capacity, kept_counts,
    slot_index,
)

# one group of 4 tokens, K=2, E=3: token t chooses EXPERTS[t] (best first)
EXPERTS = torch.tensor([[[0, 1], [0, 2], [1, 0], [0, 1]]])
GATES = torch.tensor([[[.1, .05], [.9, .02], [.5, .3], [.7, .2]]])


def test_assign_slots_serves_first_choices_first_in_token_order():
    # first choices: t0->e0 @0, t1->e0 @1, t2->e1 @0, t3->e0 @2; then second choices:
    # t0->e1 @1, t1->e2 @0, t2->e0 @3, t3->e1 @2
    expected = torch.tensor([[[0, 1], [1, 0], [0, 3], [2, 2]]])
    assert torch.equal(assign_slots(EXPERTS, GATES, 3), expected)


def test_assign_slots_bpr_serves_higher_top1_gate_first():
    # token order by top-1 gate: t1 (.9), t3 (.7), t2 (.5), t0 (.1)
    # first choices: t1->e0 @0, t3->e0 @1, t2->e1 @0, t0->e0 @2; second: t1->e2 @0, t3->e1 @1, t2->e0 @3, t0->e1 @2
    expected = torch.tensor([[[2, 2], [0, 0], [0, 3], [1, 1]]])
    assert torch.equal(assign_slots(EXPERTS, GATES, 3, batch_prioritized=True), expected)


def test_dispatch_and_combine_by_hand():
    capacity = 2
    x = torch.arange(1., 9.).view(1, 4, 2)  # token t is [2t+1, 2t+2]
    position = assign_slots(EXPERTS, GATES, 3)
    kept = position < capacity  # t2's second choice and both of t3's are over capacity
    assert kept.tolist() == [[[True, True], [True, True], [True, False], [False, False]]]
    slot = slot_index(EXPERTS, position, kept, capacity, 3)
    buffer = dispatch_tokens(x, slot, 3, capacity)
    # expert e's buffer row c holds the token served at position c; e2 has one empty slot
    x0, x1, x2 = x[0, 0], x[0, 1], x[0, 2]
    expected = torch.stack([torch.stack([x0, x1]), torch.stack([x2, x0]), torch.stack([x1, torch.zeros(2)])])
    assert torch.equal(buffer, expected)
    # identity experts: y_t = sum of the kept gates of t times x_t; t3 lost both choices and gets zero
    y = combine_outputs(buffer * 1., slot, GATES * kept)
    gate_sum = torch.tensor([.1 + .05, .9 + .02, .5, 0.])
    torch.testing.assert_close(y[0], gate_sum[:, None] * x[0])
    assert kept_counts(EXPERTS, kept, 3).tolist() == [2, 2, 1]


def test_capacity_helpers():
    assert expert_capacity(197, 8, 1, 1.05) == 26  # ceil(197 * 1.05 / 8) = ceil(25.86)
    assert expert_capacity(3, 8, 1, 1.0) == 1  # at least one slot
    assert capacity_groups(5, 7, 'sample') == (5, 7) and capacity_groups(5, 7, 'batch') == (1, 35)
    assert check_capacity(2, None, 'batch', '') == (2.0, None, 'batch')
    with pytest.raises(ValueError, match="capacity_group must be 'sample'"):
        check_capacity(1., None, 'device', '')
    with pytest.raises(ValueError, match='eval_capacity_factor must be > 0'):
        check_capacity(1., 0., 'sample', '')
