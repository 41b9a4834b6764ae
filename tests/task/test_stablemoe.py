"""StableMoE's router freeze (task/stablemoe.py): no gradient, no update, deterministic routing, the schedule."""
import pytest
import timm
import torch

from timm_tgr.task.stablemoe import RouterFreezeSchedule, freeze_routers, router_parameters, routers_frozen


def _small_model(name='vmoe_deit_tiny', **kw):
    return timm.create_model(name, img_size=32, depth=4, moe_layers=(1, 3), num_classes=5, **kw)


@pytest.mark.parametrize('name', ['vmoe_deit_tiny', 'ec_moe_deit_tiny', 'soft_moe_deit_tiny'])
def test_freeze_routers_stops_router_gradients(name):
    model = _small_model(name).train()
    x = torch.randn(2, 3, 32, 32)
    routers = router_parameters(model)
    assert routers and all('.mlp.router.' in n for n in routers) and not routers_frozen(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    (model(x).logsumexp(-1).mean() + model.moe_aux_loss()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers.values())  # stage 1
    opt.step()

    names = freeze_routers(model)
    assert names == sorted(routers) and routers_frozen(model)
    assert all(p.grad is None and not p.requires_grad for p in routers.values())
    before = {n: p.detach().clone() for n, p in routers.items()}
    expert = model.blocks[3].mlp.experts.fc1_weight
    expert_before = expert.detach().clone()
    opt.zero_grad()
    (model(x).logsumexp(-1).mean() + model.moe_aux_loss()).backward()  # stage 2
    assert all(p.grad is None for p in routers.values())
    assert expert.grad is not None and expert.grad.abs().sum() > 0
    opt.step()
    assert all(torch.equal(p, before[n]) for n, p in routers.items())  # no update, no weight decay
    assert not torch.equal(expert, expert_before)
    assert freeze_routers(model) == names  # idempotent


def test_frozen_router_routes_deterministically():
    """StableMoE's stage 2 has fixed routing: after the freeze (default) two training-mode forwards of the same
    input choose the same experts, where the noisy router (std 1.0) before it does not."""
    model = _small_model(router_noise_std=1.0).train()
    x = torch.randn(4, 3, 32, 32)

    def choices():
        model(x)
        return torch.cat([i.expert_index.reshape(-1) for i in model.routing_infos().values()])
    torch.manual_seed(0)
    assert not torch.equal(choices(), choices())
    RouterFreezeSchedule(switch_step=0).maybe_freeze(model, 0)
    assert torch.equal(choices(), choices())
    assert torch.equal(choices(), torch.cat([i.expert_index.reshape(-1) for i in _eval_routing(model, x)]))
    kept_noise = _small_model(router_noise_std=1.0)
    freeze_routers(kept_noise, disable_noise=False)
    assert kept_noise.blocks[1].mlp.router.noise_std == 1.0


def _eval_routing(model, x):
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    return list(model.routing_infos().values())


def test_router_freeze_schedule():
    model = _small_model(router_noise_std=1.0)
    sched = RouterFreezeSchedule(fraction=0.5, total_steps=10)
    assert sched.switch_step == 5
    assert sched.maybe_freeze(model, 4) is None and not routers_frozen(model)
    names = sched.maybe_freeze(model, 5)
    assert names == ['blocks.1.mlp.router.proj.weight', 'blocks.3.mlp.router.proj.weight']
    assert routers_frozen(model) and model.blocks[1].mlp.router.noise_std == 0
    assert sched.maybe_freeze(model, 6) is None
    resumed = RouterFreezeSchedule(switch_step=0)
    resumed.load_state_dict(sched.state_dict())
    fresh = _small_model()
    assert resumed.maybe_freeze(fresh, 7) == names and routers_frozen(fresh)  # re-freezes after a resume
    for kwargs, match in [(dict(), 'exactly one'), (dict(switch_step=3, fraction=0.5), 'exactly one'),
                          (dict(fraction=0.5), 'total_steps'), (dict(fraction=1.5, total_steps=10), r'\[0, 1\]'),
                          (dict(switch_step=-1), '>= 0')]:
        with pytest.raises(ValueError, match=match):
            RouterFreezeSchedule(**kwargs)
    with pytest.raises(TypeError, match='not a timm_tgr MoE model'):
        freeze_routers(torch.nn.Linear(2, 2))
