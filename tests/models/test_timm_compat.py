"""The models with timm's and torch's tools: a forward on the ``meta`` device, torch.fx feature extraction (timm's
``feature_cls='fx'``, torchvision's ``create_feature_extractor``) equal to the hook path, TorchScript refused with a
clear message. (CI also runs timm's own tests/test_models.py on the models: .ci/timm_model_tests.)"""
import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules

from timm_tgr.layers import ExpertChoiceMoE, SoftMoE, SparseMoE
from timm_tgr.layers.graph_tools import TORCHSCRIPT_UNSUPPORTED

FAMILIES = ['vmoe_deit_tiny', 'vmoe_deit_tiny_distilled', 'soft_moe_deit_tiny', 'ec_moe_deit_tiny']
SMALL = dict(img_size=32, patch_size=8, depth=4, moe_layers=(1, 3))
BLOCKS = (1, 3)


@pytest.mark.parametrize('name', FAMILIES + ['vmoe_deit_tiny.fb_in1k_upcycled'])
@pytest.mark.parametrize('train', [False, True])
def test_forward_on_meta_device(name, train):
    """Built on ``meta`` (as timm's default-cfg tests and memory-free tools build models), a forward gives the
    output shape; the upcycled tag's dropless eval path included."""
    with torch.device('meta'):
        model = timm.create_model(name, pretrained=False).train(train)
        out = model(torch.randn(2, 3, 224, 224))
    out = out[0] if isinstance(out, tuple) else out
    assert out.device.type == 'meta' and out.shape == (2, 1000)
    assert all(info.probs.device.type == 'meta' for info in model.routing_infos().values())


def _model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **SMALL, **kwargs).eval()


@pytest.mark.parametrize('name', FAMILIES)
def test_fx_features_equal_hook_features(name):
    """``features_only=True, feature_cls='fx'`` (torch.fx, MoE layers as leaves) gives the hook path's features."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hook = _model(name, features_only=True, feature_cls='hook', out_indices=BLOCKS)(x)
        fx_net = _model(name, features_only=True, feature_cls='fx', out_indices=BLOCKS)
        fx = fx_net(x)
    assert type(fx_net).__name__ == 'FeatureGraphNet'
    assert len(fx) == len(hook) == len(BLOCKS)
    for a, b in zip(fx, hook):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torchvision_create_feature_extractor_equals_hook_features():
    """torchvision's ``create_feature_extractor`` with timm's leaf modules (what ``timm.models.create_feature_extractor``
    passes) traces the model, the MoE layers whole, and gives the hook path's features; the graph calls each MoE
    layer as one module, so its routing record is filled as in eager mode."""
    from torchvision.models.feature_extraction import create_feature_extractor
    x = torch.randn(2, 3, 32, 32)
    nodes = [f'blocks.{i}' for i in BLOCKS]
    with torch.no_grad():
        hook = _model('vmoe_deit_tiny', features_only=True, feature_cls='hook', out_indices=BLOCKS)(x)
        model = _model('vmoe_deit_tiny')
        tv = create_feature_extractor(model, nodes, tracer_kwargs={
            'leaf_modules': get_notrace_modules(), 'autowrap_functions': get_notrace_functions()})(x)
        timm_fx = timm.models.create_feature_extractor(model, nodes)(x)
    for node, expected in zip(nodes, hook):
        torch.testing.assert_close(tv[node], expected, rtol=0, atol=0)
        torch.testing.assert_close(timm_fx[node], expected, rtol=0, atol=0)
    assert {SparseMoE, SoftMoE, ExpertChoiceMoE} <= set(get_notrace_modules())


def test_fx_trace_keeps_routing_and_gradients():
    """A traced whole model gives the eager logits and gradients (the MoE layers run as leaves)."""
    from timm.layers import create_feature_extractor
    model = _model('vmoe_deit_tiny', num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    graph = create_feature_extractor(model, ['head'])
    out = graph(x)['head']
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    out.sum().backward()
    assert model.blocks[1].mlp.router.proj.weight.grad is not None
    assert set(model.routing_infos()) == set(BLOCKS)


def test_check_input_still_refuses_bad_images():
    """The input checks the tracer skips still run in eager mode."""
    with pytest.raises(ValueError, match='channels'):
        _model('vmoe_deit_tiny')(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize('what', ['model', 'layer', 'features'])
def test_torchscript_is_refused_at_once(what):
    """``torch.jit.script`` is not supported: it stops with a message that says so and what to use instead."""
    model = _model('vmoe_deit_tiny')
    target = {'model': model, 'layer': model.blocks[1].mlp,
              'features': _model('vmoe_deit_tiny', features_only=True, out_indices=BLOCKS)}[what]
    with pytest.raises(RuntimeError, match='do not support TorchScript') as e:
        torch.jit.script(target)
    assert TORCHSCRIPT_UNSUPPORTED in str(e.value)
