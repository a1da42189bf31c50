"""Catalog formats: catalog.csv with extra metadata columns and several images per product, the
image-folder layouts of the retrieval benchmarks, queries.csv, and rows with a missing image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionpipes.core.errors import UserError
from visionpipes.retail.catalog import (
    check_queries_against,
    load_catalog,
    prepare_catalog,
    read_queries,
    write_catalog_csv,
    write_queries_csv,
)


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_catalog_csv_keeps_metadata_groups_views_and_reports_missing_rows(tmp_path):
    for name in ("a1.png", "a2.png", "b1.png"):
        _png(tmp_path / "img" / name)
    rows = [
        {"product_id": "A", "image": "img/a1.png", "title": "Red mug", "category": "kitchen", "brand": "Acme", "price": "9.5"},
        {"product_id": "A", "image": "img/a2.png", "title": "Red mug", "category": "kitchen", "brand": "Acme", "price": "9.5"},
        {"product_id": "B", "image": "img/missing.png", "title": "Hat", "category": "clothes", "brand": "Hatco"},
        {"product_id": "C", "image": "img/b1.png", "title": "Cap", "category": "clothes", "brand": "Hatco"},
        {"product_id": "", "image": "img/b1.png"},
    ]
    assert write_catalog_csv(tmp_path / "catalog.csv", rows, metadata_columns=["brand", "price"]) == 5
    cat = load_catalog(tmp_path)
    assert list(cat.products) == ["A", "C"]
    a = cat.products["A"]
    assert (a.title, a.category, a.metadata) == ("Red mug", "kitchen", {"brand": "Acme", "price": "9.5"})
    assert [v.relpath for v in a.views] == ["img/a1.png", "img/a2.png"]
    assert [v.row for v in a.views] == [2, 3]
    assert cat.num_views == 3 and cat.categories() == ["clothes", "kitchen"]
    # The missing image is reported with its line (header = line 1), and the empty id too.
    assert [(p.row, "does not exist" in p.message) for p in cat.problems] == [(4, True), (6, False)]
    assert "row 4: image img/missing.png of product 'B' does not exist" in str(cat.problems[0])


def test_catalog_csv_errors_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_catalog(tmp_path / "nowhere")
    (tmp_path / "catalog.csv").write_text("sku,picture\nA,a.png\n")
    with pytest.raises(UserError, match="has no column 'product_id', 'image'"):
        load_catalog(tmp_path)
    (tmp_path / "catalog.csv").write_text("product_id,image\nA,gone.png\n")
    with pytest.raises(UserError, match=r"no usable row .*row 2: image gone\.png"):
        load_catalog(tmp_path)
    (tmp_path / "catalog.csv").write_bytes(b"product_id,image\n\xff\xfe,\x80\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_catalog(tmp_path)


def test_image_folder_layouts(tmp_path):
    # Flat: root/<product_id>/*.jpg
    _png(tmp_path / "flat" / "p1" / "0.png")
    _png(tmp_path / "flat" / "p1" / "1.jpg")
    _png(tmp_path / "flat" / "p2" / "0.png")
    (tmp_path / "flat" / "p2" / "notes.txt").write_text("not an image")
    cat = load_catalog(tmp_path / "flat")
    assert {pid: len(p.views) for pid, p in cat.products.items()} == {"p1": 2, "p2": 1}
    assert cat.products["p1"].category == "" and cat.products["p1"].views[1].relpath == "p1/1.jpg"
    # In-Shop-like: root/<gender>/<kind>/<id>/*.jpg -> category from the folders above the product.
    _png(tmp_path / "shop" / "MEN" / "Denim" / "id_01" / "01_front.png")
    _png(tmp_path / "shop" / "WOMEN" / "Dresses" / "id_02" / "01_front.png")
    cat = load_catalog(tmp_path / "shop")
    assert {p.product_id: p.category for p in cat.products.values()} == {
        "id_01": "MEN/Denim",
        "id_02": "WOMEN/Dresses",
    }
    _png(tmp_path / "dup" / "a" / "x" / "0.png")
    _png(tmp_path / "dup" / "b" / "x" / "0.png")
    with pytest.raises(UserError, match="product id 'x' names two folders"):
        load_catalog(tmp_path / "dup")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"neither a catalog\.csv nor product folders"):
        load_catalog(tmp_path / "empty")


def test_queries_csv(tmp_path):
    _png(tmp_path / "q" / "1.png")
    _png(tmp_path / "img" / "a.png")
    write_catalog_csv(tmp_path / "catalog.csv", [{"product_id": "A", "image": "img/a.png"}])
    write_queries_csv(tmp_path / "queries.csv", [("q/1.png", "A"), ("q/2.png", "A"), ("q/1.png", "Z")])
    qs = read_queries(tmp_path)
    assert [(q.relpath, q.product_id, q.row) for q in qs.queries] == [("q/1.png", "A", 2), ("q/1.png", "Z", 4)]
    assert [p.row for p in qs.problems] == [3]
    unknown = check_queries_against(qs, load_catalog(tmp_path))
    assert [(p.row, "'Z' is not in the catalog" in p.message) for p in unknown] == [(4, True)]


def test_prepare_catalog_from_a_real_layout(tmp_path):
    # An image-folder catalog with a queries.csv beside it: described with absolute paths, nothing copied.
    _png(tmp_path / "shop" / "MEN" / "id_1" / "a.png")
    _png(tmp_path / "shop" / "MEN" / "id_1" / "b.png")
    _png(tmp_path / "shop" / "WOMEN" / "id_2" / "a.png")
    _png(tmp_path / "photos" / "q1.png")
    write_queries_csv(tmp_path / "q.csv", [("photos/q1.png", "id_2"), ("photos/missing.png", "id_1")])
    summary = prepare_catalog(tmp_path / "shop", tmp_path / "out", queries=tmp_path / "q.csv")
    assert (summary["products"], summary["catalog_images"], summary["query_images"]) == (2, 3, 1)
    assert len(summary["skipped_rows"]) == 1 and "row 3: query image photos/missing.png" in summary["skipped_rows"][0]
    cat = load_catalog(tmp_path / "out")
    assert {p.product_id: (p.category, len(p.views)) for p in cat.products.values()} == {
        "id_1": ("MEN", 2),
        "id_2": ("WOMEN", 1),
    }
    assert all(Path(v.relpath).is_absolute() for _, v in cat.views())
    assert read_queries(tmp_path / "out").queries[0].path == (tmp_path / "photos" / "q1.png").resolve()
