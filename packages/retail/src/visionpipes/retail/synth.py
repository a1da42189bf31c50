"""Synthetic product catalog in the `catalog.csv` format: products that differ in shape, colour,
texture and printed mark, photographed several times (pose, scale, lighting, background, blur,
occlusion), plus held-out query photos of the same products in a `queries.csv`.

It is the embedded default data of the retail pipeline (nothing can be downloaded); pointing the
pipeline at a real catalog in the same format needs no code change. Output is deterministic: the
same arguments write byte-identical files. It writes images and CSVs only; no model is involved.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.retail.catalog import CATALOG_CSV, QUERIES_CSV, write_catalog_csv, write_queries_csv

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring", "capsule", "bottle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 215, 30),
    "lime": (150, 215, 40),
    "green": (25, 140, 55),
    "teal": (20, 160, 150),
    "sky": (80, 180, 240),
    "blue": (35, 65, 205),
    "purple": (125, 50, 185),
    "magenta": (215, 40, 165),
    "black": (25, 25, 30),
    "white": (240, 240, 235),
}
TEXTURES = ("solid", "stripes", "dots", "checker", "gradient", "rings")
MARKS = (*"ABCDEFGHJKLMNPRSTUVWXYZ23456789", "#", "&", "%", "@", "+", "?")
#: The visible attributes of a product: its shape, body colour, and pattern (texture with its accent
#: colour; a solid product has no accent). Any two products differ in at least `min_difference` of
#: them; the printed mark comes on top, like a logo.
ATTRIBUTES = ("shape", "colour", "pattern")


class SynthConfig(ConfigModel):
    """What `write_catalog` generates (the `data.synth` section of `params.yaml`).

    Attributes:
        products: number of products.
        views: catalog photos per product.
        queries: held-out query photos per product (in queries.csv, not in the catalog).
        size: square image size in pixels.
        seed: random seed; the same config writes the same bytes.
        min_difference: visible attributes (of shape, colour, pattern) in which any two products differ.
        occlusion: probability that a photo has an occluding patch over the product.
        blur: probability that a photo is blurred.
        clutter: probability that the background holds distractor shapes.
    """

    products: int = Field(100, ge=2)
    views: int = Field(10, ge=1)
    queries: int = Field(2, ge=0)
    size: int = Field(128, ge=32, le=1024)
    seed: int = 0
    min_difference: int = Field(2, ge=1, le=len(ATTRIBUTES))
    occlusion: float = Field(0.3, ge=0.0, le=1.0)
    blur: float = Field(0.4, ge=0.0, le=1.0)
    clutter: float = Field(0.5, ge=0.0, le=1.0)


@dataclass(frozen=True)
class ProductDesign:
    """The look of one synthetic product."""

    product_id: str
    shape: str
    colour: str
    texture: str
    accent: str
    mark: str

    @property
    def pattern(self) -> str:
        return "solid" if self.texture == "solid" else f"{self.accent} {self.texture}"

    @property
    def title(self) -> str:
        return f"{self.colour} {self.shape}, {self.pattern}, mark {self.mark}"


def design_products(n: int, seed: int, min_difference: int = 2) -> list[ProductDesign]:
    """`n` product designs, any two differing in at least `min_difference` of shape, colour and
    pattern (texture + accent colour); each also gets a printed mark.

    Raises:
        UserError: if that many distinct designs cannot be found.
    """
    rng = np.random.default_rng([seed, 1])
    colours = list(COLOURS)
    chosen: list[tuple[int, int, tuple[int, int]]] = []
    marks: list[int] = []
    tries = 0
    while len(chosen) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise UserError(
                f"cannot design {n} products that differ in {min_difference} of shape, colour and pattern; "
                "ask for fewer products."
            )
        shape, colour = int(rng.integers(len(SHAPES))), int(rng.integers(len(colours)))
        texture = int(rng.integers(len(TEXTURES)))
        accent = colour if TEXTURES[texture] == "solid" else int(rng.integers(len(colours)))
        mark = int(rng.integers(len(MARKS)))
        if accent == colour and TEXTURES[texture] != "solid":
            continue  # a pattern needs an accent unlike the body
        cand = (shape, colour, (texture, -1 if TEXTURES[texture] == "solid" else accent))
        if all(sum(a != b for a, b in zip(cand, c)) >= min_difference for c in chosen):
            chosen.append(cand)
            marks.append(mark)
    width = max(4, len(str(n - 1)))
    return [
        ProductDesign(
            product_id=f"P{i:0{width}d}",
            shape=SHAPES[c[0]],
            colour=colours[c[1]],
            texture=TEXTURES[c[2][0]],
            accent=colours[c[1]] if c[2][1] < 0 else colours[c[2][1]],
            mark=MARKS[m],
        )
        for i, (c, m) in enumerate(zip(chosen, marks))
    ]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        pass
    return ImageFont.load_default(size=size)


def _shape_mask(shape: str, s: int) -> Image.Image:
    mask = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(mask)
    m = s * 0.06
    c = s / 2
    r = c - m
    if shape == "circle":
        d.ellipse([m, m, s - m, s - m], fill=255)
    elif shape == "square":
        d.rounded_rectangle([m * 1.5, m * 1.5, s - m * 1.5, s - m * 1.5], radius=s * 0.08, fill=255)
    elif shape == "triangle":
        d.polygon([(c, m), (s - m, s - m * 1.5), (m, s - m * 1.5)], fill=255)
    elif shape == "star":
        pts = [
            (c + (r if k % 2 == 0 else r * 0.5) * math.sin(k * math.pi / 5),
             c - (r if k % 2 == 0 else r * 0.5) * math.cos(k * math.pi / 5))
            for k in range(10)
        ]
        d.polygon(pts, fill=255)
    elif shape == "hexagon":
        d.regular_polygon((c, c, r), 6, fill=255)
    elif shape == "diamond":
        d.polygon([(c, m), (s - m * 2, c), (c, s - m), (m * 2, c)], fill=255)
    elif shape == "cross":
        w = s * 0.2
        d.rectangle([c - w, m, c + w, s - m], fill=255)
        d.rectangle([m, c - w, s - m, c + w], fill=255)
    elif shape == "ring":
        d.ellipse([m, m, s - m, s - m], fill=255)
        d.ellipse([s * 0.36, s * 0.36, s * 0.64, s * 0.64], fill=0)
    elif shape == "capsule":
        d.rounded_rectangle([m, s * 0.25, s - m, s * 0.75], radius=s * 0.25, fill=255)
    elif shape == "bottle":
        d.rounded_rectangle([s * 0.28, s * 0.3, s * 0.72, s - m], radius=s * 0.08, fill=255)
        d.rectangle([s * 0.42, m, s * 0.58, s * 0.32], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _texture(texture: str, s: int, body: np.ndarray, accent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    if texture == "solid":
        t = np.zeros((s, s), np.float32)
    elif texture == "stripes":
        angle = rng.uniform(0, math.pi)
        t = ((x * math.cos(angle) + y * math.sin(angle)) * 7 % 1.0 < 0.5).astype(np.float32)
    elif texture == "dots":
        t = ((((x * 6) % 1 - 0.5) ** 2 + ((y * 6) % 1 - 0.5) ** 2) < 0.07).astype(np.float32)
    elif texture == "checker":
        t = ((np.floor(x * 6) + np.floor(y * 6)) % 2).astype(np.float32)
    elif texture == "gradient":
        t = np.clip(x * 0.8 + y * 0.4 - 0.1, 0, 1)
    elif texture == "rings":
        t = ((np.hypot(x - 0.5, y - 0.5) * 9) % 1.0 < 0.5).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return body[None, None] * (1 - t[..., None]) + accent[None, None] * t[..., None]


def render_product(design: ProductDesign, size: int, seed: int) -> Image.Image:
    """The product itself (RGBA, transparent around it) at `size` pixels, the same for every view."""
    rng = np.random.default_rng([seed, 2, int(design.product_id[1:])])
    s = size
    body = np.array(COLOURS[design.colour], np.float32)
    accent = np.array(COLOURS[design.accent], np.float32)
    rgb = _texture(design.texture, s, body, accent, rng)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    mask = _shape_mask(design.shape, s)
    # A darker rim, then the printed mark on a plate of contrasting colour.
    rim = mask.filter(ImageFilter.MinFilter(max(3, (s // 40) | 1)))
    edge = Image.new("RGB", (s, s), tuple(int(v * 0.45) for v in body))
    img = Image.composite(img, edge, rim)
    d = ImageDraw.Draw(img)
    plate_r = s * 0.17
    lum = 0.299 * body[0] + 0.587 * body[1] + 0.114 * body[2]
    plate, ink = ((250, 250, 245), (20, 20, 25)) if lum < 140 else ((25, 25, 30), (250, 250, 245))
    c = s / 2
    d.ellipse([c - plate_r, c - plate_r, c + plate_r, c + plate_r], fill=plate)
    font = _font(int(s * 0.26))
    d.text((c, c), design.mark, fill=ink, font=font, anchor="mm")
    out = img.convert("RGBA")
    out.putalpha(mask)
    return out


def _background(s: int, rng: np.random.Generator, clutter: float) -> Image.Image:
    kind = rng.integers(3)
    # Backgrounds of any hue but muted (a shelf, a table, a wall), so colour stays mostly the product's.
    base = rng.integers(0, 256, 3).astype(np.float32)
    base = base.mean() + rng.uniform(0.0, 0.6) * (base - base.mean())
    if kind == 0:
        arr = np.broadcast_to(base, (s, s, 3)).copy()
    elif kind == 1:
        other = rng.integers(0, 256, 3).astype(np.float32)
        other = other.mean() + rng.uniform(0.0, 0.6) * (other - other.mean())
        t = np.linspace(0, 1, s, dtype=np.float32)
        ramp = t[None, :, None] if rng.random() < 0.5 else t[:, None, None]
        arr = base * (1 - ramp) + other * ramp
        arr = np.broadcast_to(arr, (s, s, 3)).copy()
    else:
        noise = rng.normal(0, 1, (s // 8 + 1, s // 8 + 1, 3)).astype(np.float32)
        big = np.asarray(Image.fromarray(((noise * 30) + 128).clip(0, 255).astype(np.uint8)).resize((s, s), Image.BICUBIC))
        arr = big.astype(np.float32) * 0.5 + base * 0.5
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    if rng.random() < clutter:
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.uniform(-0.1, 1.0, 2) * s
            w, h = rng.uniform(0.08, 0.3, 2) * s
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                d.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
            else:
                d.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
    return img


def render_view(product: Image.Image, s: int, rng: np.random.Generator, config: SynthConfig) -> Image.Image:
    """One photo of `product`: pose, scale, position, background, lighting, blur, occlusion, noise."""
    # Scale first (cheap transforms at the photo's size), then pose: a foreshortening squash (a tilt
    # of the product) and an in-plane rotation; the rotated bounding box is scaled to the target size.
    target = rng.uniform(0.55, 0.95) * s
    obj = product.resize((int(target), int(target)), Image.BICUBIC)
    squash = rng.uniform(0.7, 1.0)
    w, h = obj.size
    obj = obj.resize((max(1, int(w * squash)), h), Image.BILINEAR) if rng.random() < 0.5 else obj.resize(
        (w, max(1, int(h * squash))), Image.BILINEAR
    )
    obj = obj.rotate(float(rng.uniform(-35, 35)), resample=Image.BILINEAR, expand=True)
    k = min(1.0, s / max(obj.size))
    if k < 1.0:
        obj = obj.resize((max(1, int(obj.size[0] * k)), max(1, int(obj.size[1] * k))), Image.BILINEAR)
    img = _background(s, rng, config.clutter)
    ox = int(rng.uniform(-0.12, 0.12) * s + (s - obj.size[0]) / 2)
    oy = int(rng.uniform(-0.12, 0.12) * s + (s - obj.size[1]) / 2)
    img.paste(obj, (ox, oy), obj)
    arr = np.asarray(img).astype(np.float32)
    # Lighting: brightness, colour cast, contrast, a soft directional shade.
    arr *= rng.uniform(0.75, 1.25)
    arr *= rng.uniform(0.92, 1.08, 3)[None, None]
    mean = arr.mean()
    arr = (arr - mean) * rng.uniform(0.75, 1.2) + mean
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    arr *= (1 + rng.uniform(0, 0.35) * (xx * math.cos(angle) + yy * math.sin(angle)))[..., None]
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    if rng.random() < config.blur:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.6)) * s / 128))
    if rng.random() < config.occlusion:
        d = ImageDraw.Draw(img)
        bw, bh = rng.uniform(0.15, 0.4) * obj.size[0], rng.uniform(0.15, 0.4) * obj.size[1]
        x0 = ox + rng.uniform(0, max(1.0, obj.size[0] - bw))
        y0 = oy + rng.uniform(0, max(1.0, obj.size[1] - bh))
        d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(img).astype(np.float32) + rng.normal(0, rng.uniform(0, 6), (s, s, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB")


def write_catalog(out: str | os.PathLike, config: SynthConfig) -> dict[str, Any]:
    """Write a synthetic catalog folder: `catalog.csv`, `images/<id>/<n>.png`, `queries.csv`,
    `queries/<id>_<n>.png`, `synth.json`. The folder is written beside `out` and renamed into place.

    Returns:
        A summary (counts, config).

    Raises:
        UserError: on a bad config or if the folder holding `out` does not exist.
    """
    out = Path(out)
    designs = design_products(config.products, config.seed, config.min_difference)
    canvas = 2 * config.size  # products are drawn at twice the photo size, then scaled down
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "images").mkdir()
        if config.queries:
            (tmp / "queries").mkdir()
        rows: list[dict[str, Any]] = []
        query_rows: list[tuple[str, str]] = []
        for i, design in enumerate(designs):
            product = render_product(design, canvas, config.seed)
            (tmp / "images" / design.product_id).mkdir()
            for v in range(config.views + config.queries):
                rng = np.random.default_rng([config.seed, 3, i, v])
                photo = render_view(product, config.size, rng, config)
                if v < config.views:
                    rel = f"images/{design.product_id}/{v}.png"
                    rows.append(
                        {
                            "product_id": design.product_id,
                            "image": rel,
                            "title": design.title,
                            "category": design.shape,
                            "colour": design.colour,
                            "pattern": design.pattern,
                            "mark": design.mark,
                        }
                    )
                else:
                    rel = f"queries/{design.product_id}_{v - config.views}.png"
                    query_rows.append((rel, design.product_id))
                photo.save(tmp / rel, format="PNG", compress_level=1)
        write_catalog_csv(tmp / CATALOG_CSV, rows, metadata_columns=["colour", "pattern", "mark"])
        if query_rows:
            write_queries_csv(tmp / QUERIES_CSV, query_rows)
        summary = {
            "products": len(designs),
            "catalog_images": len(rows),
            "query_images": len(query_rows),
            "categories": sorted({d.shape for d in designs}),
            "config": config.to_dict(),
        }
        (tmp / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def replace_catalog(out: str | os.PathLike, config: SynthConfig, *, overwrite: bool) -> dict[str, Any]:
    """`write_catalog`, refusing to replace an existing folder unless `overwrite`.

    Raises:
        UserError: if `out` exists and `overwrite` is false, or `out` is a file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} is a file, not a folder.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} already exists and is not empty (pass --overwrite to replace it).")
    if out.exists() and not any(out.iterdir()):
        shutil.rmtree(out)
    return write_catalog(out, config)


def attribute_table(designs: list[ProductDesign]) -> list[tuple[str, ...]]:
    """The attribute tuples of `designs` (for checks of distinctness)."""
    return [tuple(getattr(d, a) for a in ATTRIBUTES) for d in designs]


def min_pairwise_difference(designs: list[ProductDesign]) -> int:
    """The fewest attributes in which two of `designs` differ."""
    table = attribute_table(designs)
    return min(
        (sum(x != y for x, y in zip(a, b)) for a, b in itertools.combinations(table, 2)), default=len(ATTRIBUTES)
    )
