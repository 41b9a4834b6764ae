"""Routing pictures (timm_tgr.visualize): maps against hand-made routings, heatmap rows against hand counts,
the CLI on a tiny exported model and on a TGR checkpoint with its teacher, PNG sizes."""
import argparse
import json
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models import save_for_hf

pytest.importorskip('matplotlib')

from timm_tgr.visualize import (  # noqa: E402
    AgreementCounts, ClassExpertCounts, RoutingMaps, class_order, collect_routing, routing_maps,
)
from timm_tgr.visualize import plots  # noqa: E402
from timm_tgr.visualize.cli import main  # noqa: E402
from timm_tgr.visualize.writer import round_robin  # noqa: E402
from synthetic import write_image_folder  # noqa: E402

E = 4
KW = dict(img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=2, num_heads=2, num_experts=E,
          moe_layers=(0, 1), eval_capacity_factor=float(E))  # no drops in eval unless a test asks for them
GRID = (4, 4)


def _model(arch='vmoe_deit_tiny', **kw):
    return timm.create_model(arch, **dict(KW, **kw)).eval()


def _override(model, batch, patterns, prefix_expert=3):
    """Routing override putting patch (r, c) of image b on ``patterns[block][b, r, c]`` and prefix tokens on
    ``prefix_expert``: probabilities 0.7 on the chosen expert, 0.1 elsewhere."""
    probs = {}
    for block, grid in patterns.items():
        prefix = torch.full((batch, model.num_prefix_tokens), prefix_expert)
        choice = torch.cat([prefix, grid.reshape(batch, -1)], dim=1)
        p = torch.full((batch, choice.shape[1], E), 0.1)
        p.scatter_(-1, choice.unsqueeze(-1), 0.7)
        probs[block] = p
    model.set_routing_override(probs)


def _patterns(batch):
    r = torch.arange(GRID[0]).view(1, -1, 1)
    c = torch.arange(GRID[1]).view(1, 1, -1)
    b = torch.arange(batch).view(-1, 1, 1)
    return {0: (r * GRID[1] + c + b) % E, 1: ((3 - r) + 2 * c + 0 * b) % E}


@pytest.mark.parametrize('arch, kw', [('vmoe_deit_tiny', {}), ('vmoe_deit_tiny_distilled', {}),
                                      ('vmoe_deit_tiny', {'reg_tokens': 2})])
def test_maps_and_sheet_colours_follow_a_hand_made_routing(arch, kw):
    """Prefix tokens (class, distillation, register) are left out; patch (r, c) is token prefix + r*W + c."""
    model = _model(arch, **kw)
    patterns = _patterns(2)
    _override(model, 2, patterns)
    maps = routing_maps(model, torch.randn(2, 1, 16, 16))
    assert maps.blocks == [0, 1] and maps.num_experts == E
    for b in (0, 1):
        assert torch.equal(maps.expert[b], patterns[b])
        assert maps.kept[b].all()
    palette = plots.expert_palette(E)
    assert len({tuple(c) for c in palette}) == E  # one colour per expert
    image = np.zeros((16, 16))
    fig = plots.image_sheet(image, {b: maps.expert[b][1].numpy() for b in (0, 1)},
                            {b: maps.kept[b][1].numpy() for b in (0, 1)}, E, 'title')
    for col, b in enumerate((0, 1), start=1):
        overlay = np.asarray(fig.axes[col].images[1].get_array())
        assert np.array_equal(overlay, palette[patterns[b][1].numpy()])  # each patch has its expert's colour
        assert not [p for p in fig.axes[col].patches if p.get_hatch()]  # nothing dropped, nothing hatched
    legend = fig.legends[0]
    handles = getattr(legend, 'legend_handles', None) or legend.legendHandles
    assert [tuple(h.get_facecolor()[:3]) for h in handles[:E]] == [tuple(c) for c in palette]
    plots._pyplot().close(fig)


def test_choices_dropped_by_capacity_are_hatched():
    """All 17 tokens on expert 0 with capacity ceil(17/4) = 5: the class token and the first 4 patches
    (row 0) keep their slot, the other 12 patches are dropped and hatched."""
    model = _model(capacity_factor=1.0, eval_capacity_factor=1.0)
    zeros = torch.zeros(1, *GRID, dtype=torch.long)
    _override(model, 1, {0: zeros, 1: zeros}, prefix_expert=0)
    maps = routing_maps(model, torch.randn(1, 1, 16, 16))
    expected = torch.zeros(1, *GRID, dtype=torch.bool)
    expected[:, 0] = True
    assert torch.equal(maps.kept[0], expected) and torch.equal(maps.kept[1], expected)
    fig = plots.image_sheet(np.zeros((16, 16)), {0: maps.expert[0][0].numpy()}, {0: maps.kept[0][0].numpy()}, E)
    hatched = sorted(p.get_xy() for p in fig.axes[1].patches if p.get_hatch())
    assert hatched == sorted((4.0 * c, 4.0 * r) for r in range(1, 4) for c in range(4))
    assert '12 dropped' in fig.axes[1].get_title()
    plots._pyplot().close(fig)


def test_class_expert_shares_match_a_hand_count():
    g = torch.Generator().manual_seed(0)
    experts = {7: torch.randint(0, E, (6, 3, 3), generator=g), 9: torch.randint(0, E, (6, 3, 3), generator=g)}
    targets = torch.tensor([0, 2, 2, 1, 0, 2])  # class 3 of 4 never seen
    maps = RoutingMaps(expert=experts, kept={}, logits=torch.zeros(6, 4), num_experts=E)
    counts = ClassExpertCounts(num_classes=4, num_experts=E)
    counts.update(maps.select(torch.arange(3)), targets[:3])  # two batches
    counts.update(maps.select(torch.arange(3, 6)), targets[3:])
    for b, ex in experts.items():
        hand = np.zeros((4, E))
        for n, t in enumerate(targets.tolist()):
            for e in ex[n].reshape(-1).tolist():
                hand[t, e] += 1
        assert np.array_equal(counts.counts[b].numpy(), hand)
        shares = counts.shares(b).numpy()
        assert np.allclose(shares[:3].sum(1), 1.0) and not shares[3].any()
        order = class_order(counts.shares(b), [t > 0 for t in counts.tokens(b)])
        assert sorted(order) == [0, 1, 2]  # the unseen class is left out
        dominant = [int(shares[c].argmax()) for c in order]
        assert dominant == sorted(dominant)  # grouped by dominant expert
    with pytest.raises(ValueError, match='do not fit 4 classes'):
        counts.update(maps, torch.tensor([0, 1, 2, 3, 4, 0]))


def test_collect_routing_counts_every_patch_of_every_class():
    """Through a model: every image gets the same hand-made routing, so class c counts images(c) x that routing."""
    model = _model()
    patterns = {b: p[:1].expand(2, -1, -1) for b, p in _patterns(1).items()}
    _override(model, 2, patterns)
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    batches = [(torch.randn(2, 1, 16, 16), targets[i:i + 2]) for i in range(0, 6, 2)]
    counts, agreement, seen = collect_routing(model, batches, num_classes=3)
    assert seen == 6 and not agreement.total
    for b in (0, 1):
        per_image = torch.bincount(patterns[b][0].reshape(-1), minlength=E)
        assert torch.equal(counts.counts[b], torch.stack([2 * per_image, 1 * per_image, 3 * per_image]))
    counts, _, seen = collect_routing(model, batches, num_classes=3, max_samples=4)
    assert seen == 4 and counts.tokens(0).tolist() == [32, 16, 16]


def test_agreement_counts_and_round_robin():
    s = torch.tensor([[[0, 1], [2, 3]], [[1, 1], [1, 1]]])
    t = torch.tensor([[[0, 1], [0, 0]], [[1, 0], [0, 0]]])
    agreement = AgreementCounts()
    agreement.update(RoutingMaps(expert={5: s}, kept={}, logits=torch.zeros(2, 2), teacher_expert={5: t}))
    assert agreement.shares() == {5: 3 / 8}
    assert round_robin([2, 2, 0, 1, 0, 2], 4) == [2, 3, 0, 4]
    assert round_robin([1, 1, 1], 5) == [0, 1, 2]


def _image_tree(root, split='validation', per_class=3):
    write_image_folder(root, splits=((split, per_class),), class_name='{}')
    return root


def _pngs(out, sub):
    return sorted(os.path.join(out, sub, f) for f in os.listdir(os.path.join(out, sub)))


def _save(model, folder, **model_args):
    """``save_for_hf`` of ``model`` with the data config it was trained for, as timm_tgr.export writes it."""
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(1, 16, 16), mean=(0.5,), std=(0.25,), crop_pct=1.0)
    save_for_hf(model, folder, model_args=model_args)


def test_cli_on_an_exported_model_writes_the_pictures(tmp_path):
    _save(_model(), tmp_path / 'export', **KW)
    data = _image_tree(tmp_path / 'data')
    out = tmp_path / 'pictures'
    summary = main([f'local-dir:{tmp_path / "export"}', '--images', str(data / 'validation' / '1' / '0.png'),
                    '--dataset', 'folder', '--data-dir', str(data), '--num-images', '3', '--out', str(out),
                    '--device', 'cpu'])
    sheets = _pngs(out, 'sheets')
    names = [os.path.basename(f) for f in sheets]
    assert names == ['0.png', 'validation-00000-0.png', 'validation-00003-1.png', 'validation-00006-2.png']
    assert not (out / 'agreement').exists() and not (out / 'agreement.png').exists()
    for f in sheets:
        with Image.open(f) as img:
            assert img.size == plots.image_sheet_size(2, E)
    for f in ('class_expert.png', 'class_expert_block0.png', 'class_expert_block1.png'):
        with Image.open(out / f) as img:
            img.verify()
    routing = json.loads((out / 'routing.json').read_text())
    assert routing == json.loads(json.dumps(summary))
    assert routing['class_names'] == ['0', '1', '2'] and routing['dataset']['images'] == 9
    assert [i['target'] for i in routing['images']] == [1, 0, 1, 2]  # the file's class from its folder
    for b in ('0', '1'):
        ce = routing['class_expert'][b]
        assert ce['tokens'] == [48, 48, 48]  # 3 images x 16 patches per class: prefix tokens are not counted
        assert np.allclose(np.sum(ce['shares'], 1), 1.0)
        image = routing['images'][0]
        assert np.array(image['expert'][b]).shape == GRID


def test_cli_on_a_tgr_checkpoint_draws_the_teacher_agreement(tmp_path, caplog):
    """Zero teacher routers give uniform p_t, whose top-1 is expert 0: the agreement of a block is the share of
    the student's patch tokens on expert 0."""
    student = timm.create_model('tgr_moe_deit_tiny', **KW)
    model_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in KW.items()}
    args = argparse.Namespace(
        model='tgr_moe_deit_tiny', model_kwargs=model_kwargs, num_classes=3, in_chans=1, img_size=16, mean=[0.5],
        std=[0.25], crop_pct=1.0, dataset='', teacher='deit3_small_patch16_224',
        teacher_resolved='deit3_small_patch16_224',
        teacher_kwargs=dict(embed_dim=32, num_heads=2, patch_size=4, img_size=16, in_chans=1, num_classes=3, depth=2),
        teacher_checkpoint='', no_teacher_pretrained=True, layer_map='aligned')
    routers = {f'{b}.proj.weight': torch.zeros(E, 32) for b in (0, 1)}
    ckpt = tmp_path / 'run' / 'model_best.pth.tar'
    ckpt.parent.mkdir()
    torch.save({'state_dict': student.state_dict(), 'args': args, 'epoch': 0,
                'task_state': {'teacher_routers': routers}}, ckpt)
    data = _image_tree(tmp_path / 'data', per_class=2)
    out = tmp_path / 'pictures'
    main([str(ckpt), '--dataset', 'folder', '--data-dir', str(data), '--num-images', '2', '--out', str(out)])
    agreement_sheets = _pngs(out, 'agreement')
    assert len(agreement_sheets) == 2 and len(_pngs(out, 'sheets')) == 2
    for f in agreement_sheets:
        with Image.open(f) as img:
            assert img.size == plots.agreement_sheet_size(2, E)
    routing = json.loads((out / 'routing.json').read_text())
    for b in ('0', '1'):
        counts = np.array(routing['class_expert'][b]['counts'])
        assert routing['agreement'][b] == pytest.approx(counts[:, 0].sum() / counts.sum())
        for image in routing['images']:
            assert not np.any(image['teacher_expert'][b])
    with Image.open(out / 'agreement.png') as img:
        img.verify()

    # the run's teacher checkpoint moved away: the student's pictures, no agreement, a warning naming the fix
    args.teacher_checkpoint = str(tmp_path / 'gone.pth.tar')
    torch.save({'state_dict': student.state_dict(), 'args': args, 'task_state': {'teacher_routers': routers}}, ckpt)
    out2 = tmp_path / 'pictures2'
    with caplog.at_level('WARNING'):
        main([str(ckpt), '--images', str(data / 'validation' / '2'), '--out', str(out2)])
    assert '--teacher-checkpoint FILE' in caplog.text
    assert len(_pngs(out2, 'sheets')) == 2 and not (out2 / 'agreement').exists()
    assert (out2 / 'class_expert.png').is_file()  # the images' classes come from their folder


def test_image_folders_name_their_images_by_their_path_inside(tmp_path):
    from timm_tgr.visualize.cli import image_files
    data = _image_tree(tmp_path / 'data', per_class=2)
    names = [n for _, n in image_files([str(data / 'validation'), str(data / 'validation' / '0' / '1.png')])]
    assert names == ['0_0', '0_1', '1_0', '1_1', '2_0', '2_1', '1']
    assert [n for _, n in image_files([str(data / 'validation' / c / '0.png') for c in '01'])] == ['0', '0-2']


def test_cli_refuses_a_dense_model_and_nothing_to_draw(tmp_path):
    dense = timm.create_model('deit_tiny_patch16_224', img_size=16, patch_size=4, in_chans=1, num_classes=3,
                              embed_dim=32, depth=1, num_heads=2)
    _save(dense, tmp_path / 'dense', img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=1,
          num_heads=2)
    with pytest.raises(SystemExit, match='not a timm_tgr MoE model'):
        main([f'local-dir:{tmp_path / "dense"}', '--images', str(tmp_path), '--out', str(tmp_path / 'o')])
    _save(_model(), tmp_path / 'moe', **KW)
    with pytest.raises(SystemExit, match='--images'):
        main([f'local-dir:{tmp_path / "moe"}', '--out', str(tmp_path / 'o')])


def test_data_config_follows_the_model_when_its_cfg_does_not():
    """A model whose pretrained_cfg still says timm's 3 x 224 x 224 gets its own input size and channels."""
    from timm_tgr.visualize.cli import model_data_config
    cfg = model_data_config(_model())
    assert tuple(cfg['input_size']) == (1, 16, 16) and len(cfg['mean']) == len(cfg['std']) == 1
