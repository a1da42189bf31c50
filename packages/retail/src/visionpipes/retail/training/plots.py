"""The evaluation's figures: the Recall@K curve and a grid of sample queries with their top-5
products, as PNG files written atomically (matplotlib / Pillow).

Drawing only; the scores come from `training.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visionpipes.core.io import atomic_path
from visionpipes.retail.embedding.preprocess import read_view


def plot_recall_curve(curve: Sequence[tuple[int, float]], path: Path, *, title: str) -> None:
    """Recall@K against K, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ks, rs = zip(*curve)
    ax.plot(ks, rs, marker="o", ms=3)
    ax.set_xlabel("K (products returned)")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(1, max(ks))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_sample_queries(
    query_paths: Sequence[Path],
    query_labels: Sequence[str],
    tops: Sequence[Sequence[tuple[str, float, int]]],
    gallery_paths: Sequence[Path],
    path: Path,
    *,
    rows: int = 8,
    thumb: int = 96,
    seed: int = 0,
) -> None:
    """A PNG grid: each row a query photo then its top-5 products (their best-matching catalog image),
    framed green when the product is the query's, red otherwise, with the cosine score."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(query_paths), min(rows, len(query_paths)), replace=False).tolist())
    pad, label_h = 4, 14
    width = 6 * (thumb + pad) + pad + 8
    canvas = Image.new("RGB", (width, len(picks) * (thumb + label_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def tile(p: Path) -> Image.Image:
        return Image.fromarray(read_view(p, thumb))

    for r, qi in enumerate(picks):
        y = pad + r * (thumb + label_h + pad)
        canvas.paste(tile(query_paths[qi]), (pad, y))
        draw.text((pad, y + thumb), f"query {query_labels[qi]}", fill=(0, 0, 0))
        for c, (pid, score, gi) in enumerate(tops[qi][:5]):
            x = pad + 8 + (c + 1) * (thumb + pad)
            ok = pid == query_labels[qi]
            colour = (30, 160, 60) if ok else (210, 40, 40)
            draw.rectangle([x - 2, y - 2, x + thumb + 1, y + thumb + 1], outline=colour, width=3)
            canvas.paste(tile(gallery_paths[gi]), (x, y))
            draw.text((x, y + thumb), f"{pid} {score:.2f}", fill=colour)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
