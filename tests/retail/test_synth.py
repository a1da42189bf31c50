"""The synthetic catalog: written in the catalog.csv/queries.csv format, distinct products,
several varied views each, held-out queries, byte-identical for the same seed; CLI errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from visionpipes.core.config import parse_config
from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image
from visionpipes.retail.catalog import load_catalog, read_queries
from visionpipes.retail.synth import SynthConfig, design_products, min_pairwise_difference, write_catalog


def _digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_catalog_format_views_and_determinism(tmp_path):
    config = SynthConfig(products=6, views=3, queries=2, size=48, seed=3)
    summary = write_catalog(tmp_path / "a", config)
    assert (summary["products"], summary["catalog_images"], summary["query_images"]) == (6, 18, 12)
    cat = load_catalog(tmp_path / "a")
    assert len(cat) == 6 and cat.num_views == 18 and not cat.problems
    product = next(iter(cat.products.values()))
    assert set(product.metadata) == {"colour", "pattern", "mark"} and product.category in product.title
    queries = read_queries(tmp_path / "a")
    assert len(queries) == 12 and {q.product_id for q in queries.queries} == set(cat.products)
    # Views of one product differ (pose, background, lighting), and queries are not catalog copies.
    views = [read_image(v.path).astype(np.int16) for v in product.views]
    assert views[0].shape == (48, 48, 3)
    assert all(np.abs(views[0] - v).mean() > 5 for v in views[1:])
    catalog_bytes = {v.path.read_bytes() for _, v in cat.views()}
    assert not any(q.path.read_bytes() in catalog_bytes for q in queries.queries)
    # Deterministic: the same config writes the same bytes; another seed does not.
    write_catalog(tmp_path / "b", config)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    write_catalog(tmp_path / "c", SynthConfig(products=6, views=3, queries=2, size=48, seed=4))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_designs_are_distinct():
    designs = design_products(100, seed=0, min_difference=2)
    assert len({d.product_id for d in designs}) == 100
    assert min_pairwise_difference(designs) >= 2
    assert len({d.shape for d in designs}) == 10 and len({d.colour for d in designs}) == 12
    # Larger catalogs: any two products differ in at least one of shape, colour, pattern.
    assert min_pairwise_difference(design_products(400, seed=0, min_difference=1)) >= 1
    with pytest.raises(UserError, match="cannot design 200 products that differ in 2"):
        design_products(200, seed=0, min_difference=2)


def test_synth_bad_input(tmp_path):
    with pytest.raises(UserError, match=r"data\.synth: key 'products' = 1: input should be greater than or equal to 2"):
        write_catalog(tmp_path / "x", parse_config(SynthConfig, {"products": 1}, source="params.yaml:data.synth"))
    with pytest.raises(UserError, match=r"output folder .* does not exist"):
        write_catalog(tmp_path / "missing" / "x", SynthConfig(products=2, views=1, size=32))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    run = subprocess.run(
        [sys.executable, "-m", "visionpipes.retail.cli", "synth", str(tmp_path / "full"), "--products", "2"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "already exists and is not empty" in run.stderr
    assert "Traceback" not in run.stderr and (tmp_path / "full" / "keep.txt").exists()
