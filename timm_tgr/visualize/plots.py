"""The pictures (matplotlib, Agg): expert maps on images, class-by-expert heatmaps, teacher agreement.

Every figure has a fixed size in inches (``DPI`` pixels each), so a sheet's PNG size depends only on the
number of MoE blocks and experts. One palette per expert count E (:func:`expert_palette`) colours the experts
in every picture: the same expert has the same colour on every image, block and heatmap axis.
"""
import math
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    'DPI', 'expert_palette', 'expert_colors', 'display_image', 'image_sheet', 'image_sheet_size',
    'agreement_sheet', 'agreement_sheet_size', 'class_expert_figure', 'agreement_figure', 'save_figure',
]

DPI = 100
PANEL_IN = 2.0  # a map panel is PANEL_IN x PANEL_IN inches
TITLE_IN = 0.4  # the sheet's title
ROW_TITLE_IN = 0.3  # each row's panel titles
LEGEND_ROW_IN = 0.3  # one row of legend entries
LEGEND_COLS = 12
MAX_LABELLED_CLASSES = 40  # heatmaps with more classes get a fixed height and no class labels
OVERLAY_ALPHA = 0.6  # expert colours over the image
AGREE_COLORS = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # differ (black), agree (white): no expert colour


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def expert_palette(num_experts: int) -> np.ndarray:
    """``[E, 3]`` RGB in [0, 1]: tab10 up to 10 experts, tab20 up to 20, evenly spaced turbo colours beyond."""
    from matplotlib import colormaps
    if num_experts <= 10:
        colors = colormaps['tab10'].colors[:num_experts]
    elif num_experts <= 20:
        colors = colormaps['tab20'].colors[:num_experts]
    else:
        colors = colormaps['turbo'](np.linspace(0.05, 0.95, num_experts))[:, :3]
    return np.asarray(colors, dtype=np.float64)[:, :3]


def expert_colors(expert: np.ndarray, num_experts: int) -> np.ndarray:
    """The ``[rows, columns]`` expert grid as ``[rows, columns, 3]`` palette colours."""
    expert = np.asarray(expert)
    if expert.size and (expert.min() < 0 or expert.max() >= num_experts):
        raise ValueError(f'expert ids {expert.min()}..{expert.max()} outside 0..{num_experts - 1}.')
    return expert_palette(num_experts)[expert]


def display_image(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The model's input ``[C, H, W]`` (normalized) back in [0, 1]: ``[H, W]`` for 1 channel, else ``[H, W, 3]``."""
    x = x.detach().float().cpu()
    c = x.shape[0]
    m = torch.tensor(list(mean) * (c if len(mean) == 1 else 1), dtype=x.dtype).view(c, 1, 1)
    s = torch.tensor(list(std) * (c if len(std) == 1 else 1), dtype=x.dtype).view(c, 1, 1)
    img = (x * s + m).clamp(0, 1)
    if c == 1:
        return img[0].numpy()
    return img[:3].permute(1, 2, 0).numpy()


def _legend_rows(num_entries: int) -> int:
    return math.ceil(num_entries / LEGEND_COLS)


def image_sheet_size(num_blocks: int, num_experts: int) -> Tuple[int, int]:
    """(width, height) in pixels of :func:`image_sheet`'s PNG."""
    w = PANEL_IN * (num_blocks + 1)
    h = TITLE_IN + ROW_TITLE_IN + PANEL_IN + LEGEND_ROW_IN * _legend_rows(num_experts + 1)
    return round(w * DPI), round(h * DPI)


def agreement_sheet_size(num_blocks: int, num_experts: int) -> Tuple[int, int]:
    """(width, height) in pixels of :func:`agreement_sheet`'s PNG."""
    w = PANEL_IN * (num_blocks + 1)
    h = TITLE_IN + 3 * (ROW_TITLE_IN + PANEL_IN) + LEGEND_ROW_IN * _legend_rows(num_experts + 3)
    return round(w * DPI), round(h * DPI)


def _show_image(ax, image: np.ndarray, lighten: float = 0.) -> Tuple[int, int]:
    """``image`` (values in [0, 1]) on ``ax``; ``lighten`` lifts black towards gray (under colour overlays)."""
    h, w = image.shape[:2]
    if lighten:
        image = lighten + (1 - lighten) * image
    ax.imshow(image, cmap='gray' if image.ndim == 2 else None, vmin=0, vmax=1, extent=(0, w, h, 0),
              interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])
    return h, w


def _draw_grid_colors(ax, image: np.ndarray, colors: np.ndarray, dropped: Optional[np.ndarray] = None) -> None:
    """``image`` with the ``[rows, columns, 3]`` colours over its patches; ``dropped`` patches hatched."""
    from matplotlib.patches import Rectangle
    h, w = _show_image(ax, image, lighten=0.35)  # expert colours stay readable over black backgrounds
    ax.imshow(colors, extent=(0, w, h, 0), alpha=OVERLAY_ALPHA, interpolation='nearest')
    rows, cols = colors.shape[:2]
    ph, pw = h / rows, w / cols
    for r, c in zip(*np.nonzero(dropped)) if dropped is not None else ():
        ax.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, hatch='////', edgecolor='black', linewidth=0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)


def _expert_handles(num_experts: int) -> list:
    from matplotlib.patches import Patch
    palette = expert_palette(num_experts)
    return [Patch(facecolor=palette[e], label=str(e)) for e in range(num_experts)]


def _dropped_handle():
    from matplotlib.patches import Patch
    return Patch(facecolor='white', edgecolor='black', hatch='////', label='dropped')


def _new_figure(width_in: float, height_in: float):
    plt = _pyplot()
    fig = plt.figure(figsize=(width_in, height_in), dpi=DPI)
    return fig


def _axes_rect(fig, row_top_in: float, col: int) -> list:
    """[left, bottom, width, height] (figure fractions) of the panel in column ``col`` whose top is
    ``row_top_in`` inches below the figure's top."""
    w_in, h_in = fig.get_size_inches()
    pad = 0.06 * PANEL_IN
    return [(col * PANEL_IN + pad) / w_in, 1 - (row_top_in + PANEL_IN - pad) / h_in,
            (PANEL_IN - 2 * pad) / w_in, (PANEL_IN - 2 * pad) / h_in]


def _legend(fig, handles: list, title: str) -> None:
    fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), LEGEND_COLS), fontsize=7,
               title=title, title_fontsize=7, frameon=False, handlelength=1.2, columnspacing=0.8,
               bbox_to_anchor=(0.5, 0.0), borderaxespad=0.1)


def image_sheet(image: np.ndarray, expert: Mapping[int, np.ndarray], kept: Mapping[int, np.ndarray],
                num_experts: int, title: str = ''):
    """One image and, side by side, every MoE block's top-1 expert per patch (palette colours over the image),
    patches whose choice was dropped by capacity hatched. ``expert`` / ``kept``: ``{block: [rows, columns]}``."""
    blocks = sorted(expert)
    w_px, h_px = image_sheet_size(len(blocks), num_experts)
    fig = _new_figure(w_px / DPI, h_px / DPI)
    top = TITLE_IN + ROW_TITLE_IN
    ax = fig.add_axes(_axes_rect(fig, top, 0))
    _show_image(ax, image)
    ax.set_title('input', fontsize=8)
    for col, b in enumerate(blocks, start=1):
        ax = fig.add_axes(_axes_rect(fig, top, col))
        dropped = ~np.asarray(kept[b], dtype=bool)
        _draw_grid_colors(ax, image, expert_colors(expert[b], num_experts), dropped)
        ax.set_title(f'block {b + 1} (index {b})' + (f', {int(dropped.sum())} dropped' if dropped.any() else ''),
                     fontsize=8)
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / fig.get_size_inches()[1])
    _legend(fig, _expert_handles(num_experts) + [_dropped_handle()], 'top-1 expert')
    return fig


def agreement_sheet(image: np.ndarray, expert: Mapping[int, np.ndarray], teacher_expert: Mapping[int, np.ndarray],
                    num_experts: int, title: str = ''):
    """Per MoE block: the student's top-1 expert, the teacher router's, and where they agree (white) or not
    (black), with the block's share of agreeing patches."""
    blocks = sorted(expert)
    w_px, h_px = agreement_sheet_size(len(blocks), num_experts)
    fig = _new_figure(w_px / DPI, h_px / DPI)
    rows = ('student', 'teacher router', 'agreement')
    for r, name in enumerate(rows):
        top = TITLE_IN + r * (ROW_TITLE_IN + PANEL_IN) + ROW_TITLE_IN
        ax = fig.add_axes(_axes_rect(fig, top, 0))
        _show_image(ax, image)
        ax.set_title(f'input; row: {name}', fontsize=8)
        for col, b in enumerate(blocks, start=1):
            ax = fig.add_axes(_axes_rect(fig, top, col))
            s, t = np.asarray(expert[b]), np.asarray(teacher_expert[b])
            if r == 0:
                _draw_grid_colors(ax, image, expert_colors(s, num_experts))
                ax.set_title(f'block {b + 1} (index {b})', fontsize=8)
            elif r == 1:
                _draw_grid_colors(ax, image, expert_colors(t, num_experts))
            else:
                agree = s == t
                _draw_grid_colors(ax, image, AGREE_COLORS[agree.astype(int)])
                ax.set_title(f'agree {100 * agree.mean():.0f} %', fontsize=8)
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / fig.get_size_inches()[1])
    from matplotlib.patches import Patch
    handles = _expert_handles(num_experts) + [Patch(facecolor=AGREE_COLORS[1], edgecolor='black', label='agree'),
                                              Patch(facecolor=AGREE_COLORS[0], label='differ')]
    _legend(fig, handles, 'top-1 expert')
    return fig


def class_expert_figure(shares: Mapping[int, np.ndarray], orders: Mapping[int, List[int]],
                        class_names: Sequence[str], tokens: Optional[Mapping[int, np.ndarray]] = None,
                        title: str = ''):
    """Per MoE block a classes x experts heatmap of the share of each class's patch tokens sent to each
    expert (rows sum to 1), rows in ``orders[block]``; expert labels in the palette's colours."""
    plt = _pyplot()
    blocks = sorted(shares)
    num_classes = max(len(orders[b]) for b in blocks)
    num_experts = np.asarray(shares[blocks[0]]).shape[1]
    label_rows = num_classes <= MAX_LABELLED_CLASSES
    label_in = min(0.08 * max((len(n) for n in class_names), default=1) + 0.3, 1.6) if label_rows else 0.5
    panel_w = label_in + 0.42 * min(num_experts, 32) + 0.2
    panel_h = 0.3 * min(num_classes, MAX_LABELLED_CLASSES) + 1.0
    width = max(panel_w * len(blocks) + 0.8, 4.0)
    fig, axes = plt.subplots(1, len(blocks), figsize=(width, panel_h + 0.6), dpi=DPI,
                             layout='constrained', squeeze=False)
    palette = expert_palette(num_experts)
    # colour scale up to the largest share (at least 1/E, what a class spread evenly over the experts gets)
    vmax = max([1 / num_experts] + [float(np.asarray(shares[b])[orders[b]].max()) for b in blocks if orders[b]])
    image = None
    for ax, b in zip(axes[0], blocks):
        order = orders[b]
        data = np.asarray(shares[b])[order]
        image = ax.imshow(data, vmin=0, vmax=vmax, cmap='magma', aspect='auto', interpolation='nearest')
        if data.size <= 400:
            for (r, e), v in np.ndenumerate(data):
                ax.text(e, r, f'{100 * v:.0f}', ha='center', va='center', fontsize=6,
                        color='black' if v > 0.6 * vmax else 'white')
        ax.set_xticks(range(num_experts))
        ax.set_xticklabels([str(e) for e in range(num_experts)], fontsize=7)
        for e, lab in enumerate(ax.get_xticklabels()):
            lab.set_color(palette[e])
            lab.set_fontweight('bold')
        if label_rows:
            ax.set_yticks(range(len(order)))
            names = [class_names[c] if c < len(class_names) else str(c) for c in order]
            if tokens is not None:
                names = [f'{n} ({int(tokens[b][c])})' if len(order) <= 12 else n for n, c in zip(names, order)]
            ax.set_yticklabels(names, fontsize=7)
        else:
            ax.set_yticks([])
            ax.set_ylabel(f'{len(order)} classes, grouped by dominant expert', fontsize=7)
        ax.set_xlabel('expert', fontsize=8)
        ax.set_title(f'block {b + 1} (index {b})', fontsize=8)
    cbar = fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    cbar.set_label("share of the class's patch tokens (numbers in %)", fontsize=7)
    cbar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(_wrap(title, width), fontsize=8)
    return fig


def _wrap(text: str, width_in: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at a small font."""
    import textwrap
    return '\n'.join(textwrap.wrap(text, max(20, int(width_in * 15))))


def agreement_figure(agreement: Mapping[int, float], title: str = ''):
    """Bars: per MoE block, the share of patch tokens whose top-1 expert is the teacher router's."""
    plt = _pyplot()
    blocks = sorted(agreement)
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * len(blocks), 3.0), dpi=DPI, layout='constrained')
    values = [100 * agreement[b] for b in blocks]
    bars = ax.bar([f'block {b + 1}' for b in blocks], values, color='0.45')
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 1, f'{v:.1f}', ha='center', va='bottom', fontsize=7)
    ax.set_ylim(0, 105)
    ax.set_ylabel('top-1 expert = teacher router\'s (% of patches)', fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_title(_wrap(title, 1.6 + 0.7 * len(blocks)), fontsize=8)
    return fig


def save_figure(fig, path: str) -> str:
    """Write ``fig`` as a PNG at :data:`DPI` (the figure's own size, no tight crop) and close it."""
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path
