"""Product catalog formats: `catalog.csv` beside a folder of images, the image-folder layout of the
product-retrieval benchmarks (one folder per product id), and `queries.csv` (query image -> product id).

It reads and writes these formats and reports unusable rows; it never decodes pixels for training
or computes embeddings (see `visionpipes.retail.training` and `visionpipes.retail.embedding`).

`catalog.csv` columns: `product_id` and `image` (a path relative to the CSV's folder) are required;
`title` and `category` are optional; every other column is kept, per product, as metadata. A product
may have several rows, one per image; its title, category and metadata come from its first row.
A row whose image file is missing is reported with its row number (the CSV's line number: the
header is line 1) and left out; the other rows are still read.

Image-folder layout: every folder that directly holds images is one product, named by the folder;
the folders above it (relative to the root) are its category, so `root/<id>/*.jpg` (flat),
`root/<class>/<id>/*.jpg` (Stanford Online Products-like) and `root/MEN/Denim/<id>/*.jpg` (In-Shop)
all read as products.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path

CATALOG_CSV = "catalog.csv"
QUERIES_CSV = "queries.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Columns of catalog.csv that are product fields, not metadata.
CATALOG_FIELDS = ("product_id", "image", "title", "category")


@dataclass(frozen=True)
class CatalogProblem:
    """A row (or file) of a catalog that was left out, and why.

    Attributes:
        source: the CSV file or folder.
        row: the CSV line number (header = 1), or 0 where the format has no rows.
        message: one sentence naming what is wrong.
    """

    source: str
    row: int
    message: str

    def __str__(self) -> str:
        where = f"{self.source} row {self.row}" if self.row else self.source
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ProductView:
    """One image of a product.

    Attributes:
        path: the image file (absolute).
        relpath: the path as the catalog names it, relative to the catalog root (POSIX).
        row: the CSV line number it came from (0 for the image-folder layout).
    """

    path: Path
    relpath: str
    row: int = 0


@dataclass
class Product:
    """A catalog product with its views."""

    product_id: str
    title: str = ""
    category: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    views: list[ProductView] = field(default_factory=list)


@dataclass
class Catalog:
    """A whole catalog: products in file order, the root their image paths are relative to, and the
    rows that were left out.

    Attributes:
        root: the folder image paths are relative to.
        products: product id -> product, in first-appearance order.
        problems: rows left out (missing image, empty product id, ...).
        source: the catalog.csv or the image folder it was read from.
    """

    root: Path
    products: dict[str, Product]
    problems: list[CatalogProblem] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.products)

    @property
    def num_views(self) -> int:
        return sum(len(p.views) for p in self.products.values())

    def views(self) -> list[tuple[str, ProductView]]:
        """Every (product_id, view), in catalog order."""
        return [(pid, v) for pid, p in self.products.items() for v in p.views]

    def categories(self) -> list[str]:
        """Distinct categories, sorted."""
        return sorted({p.category for p in self.products.values()})


@dataclass(frozen=True)
class Query:
    """One query photo and the product it shows."""

    path: Path
    relpath: str
    product_id: str
    row: int = 0


@dataclass
class QuerySet:
    """Queries read from a `queries.csv`, and the rows left out."""

    root: Path
    queries: list[Query]
    problems: list[CatalogProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.queries)


def _read_csv_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line_number, row)]) of a CSV with a header naming at least `required`."""
    if not path.is_file():
        raise UserError(f"catalog file {path} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise UserError(
                    f"{path} has no column {', '.join(repr(c) for c in missing)} (header: {', '.join(header) or 'empty'})."
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                if None in row:
                    raise UserError(f"{path} line {reader.line_num} has more fields than the header.")
                rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason}).") from None
    except csv.Error as err:
        raise UserError(f"{path} is not a readable CSV file ({err}).") from None
    return header, rows


def _resolve(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p


def read_catalog_csv(path: str | os.PathLike) -> Catalog:
    """Read a `catalog.csv` (image paths relative to its folder).

    Rows with a missing image, an empty product id or an empty image field are reported in
    `Catalog.problems` with their line number and left out; the other rows are read.

    Raises:
        UserError: if the file is missing, not a CSV, lacks the `product_id` or `image` column, or
            has no usable row at all.
    """
    path = Path(path)
    root = path.parent
    header, rows = _read_csv_rows(path, ("product_id", "image"))
    extra = [c for c in header if c not in CATALOG_FIELDS]
    products: dict[str, Product] = {}
    problems: list[CatalogProblem] = []
    for line, row in rows:
        pid, image = row.get("product_id", ""), row.get("image", "")
        if not pid:
            problems.append(CatalogProblem(str(path), line, "product_id is empty."))
            continue
        if not image:
            problems.append(CatalogProblem(str(path), line, f"product {pid!r} has an empty image field."))
            continue
        file = _resolve(root, image)
        if not file.is_file():
            problems.append(CatalogProblem(str(path), line, f"image {image} of product {pid!r} does not exist."))
            continue
        product = products.get(pid)
        if product is None:
            product = products[pid] = Product(
                pid,
                title=row.get("title", ""),
                category=row.get("category", ""),
                metadata={c: row.get(c, "") for c in extra},
            )
        product.views.append(ProductView(file, Path(image).as_posix(), line))
    if not products:
        detail = f" ({problems[0]})" if problems else ""
        raise UserError(f"catalog {path} has no usable row{detail}.")
    return Catalog(root=root, products=products, problems=problems, source=str(path))


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def read_image_folder(root: str | os.PathLike) -> Catalog:
    """Read the image-folder layout: each folder holding images is a product (id = folder name,
    category = the folders above it relative to `root`, joined by '/').

    Raises:
        UserError: if `root` is not a folder, holds no product folder, or two folders share a name.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"catalog folder {root} does not exist.")
    products: dict[str, Product] = {}
    problems: list[CatalogProblem] = []
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        folder_path = Path(folder)
        if folder_path == root:
            loose = [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
            if loose:
                problems.append(
                    CatalogProblem(str(root), 0, f"{len(loose)} image(s) directly in the root belong to no product folder.")
                )
            continue
        images = sorted(f for f in files if _is_image(folder_path / f))
        if not images:
            continue
        pid = folder_path.name
        rel_parent = folder_path.parent.relative_to(root).as_posix()
        if pid in products:
            raise UserError(
                f"catalog folder {root}: product id {pid!r} names two folders ({products[pid].views[0].path.parent} "
                f"and {folder_path}); product folder names must be unique."
            )
        products[pid] = Product(
            pid,
            title=pid,
            category="" if rel_parent == "." else rel_parent,
            views=[ProductView(folder_path / f, (folder_path / f).relative_to(root).as_posix()) for f in images],
        )
    if not products:
        raise UserError(f"catalog folder {root} has neither a {CATALOG_CSV} nor product folders holding images.")
    return Catalog(root=root, products=products, problems=problems, source=str(root))


def load_catalog(path: str | os.PathLike) -> Catalog:
    """Read a catalog: a `catalog.csv` file, a folder holding one, or an image-folder layout.

    Raises:
        UserError: see `read_catalog_csv` and `read_image_folder`.
    """
    path = Path(path)
    if path.is_file():
        return read_catalog_csv(path)
    if (path / CATALOG_CSV).is_file():
        return read_catalog_csv(path / CATALOG_CSV)
    if not path.exists():
        raise UserError(f"catalog {path} does not exist.")
    return read_image_folder(path)


def read_queries(path: str | os.PathLike) -> QuerySet:
    """Read a `queries.csv` (columns `image`, `product_id`; paths relative to its folder), or the
    `queries.csv` inside a folder. Rows whose image is missing are reported and left out.

    Raises:
        UserError: if the file is missing, lacks a column, or has no usable row.
    """
    path = Path(path)
    if path.is_dir():
        path = path / QUERIES_CSV
    _, rows = _read_csv_rows(path, ("image", "product_id"))
    queries: list[Query] = []
    problems: list[CatalogProblem] = []
    for line, row in rows:
        image, pid = row["image"], row["product_id"]
        if not image or not pid:
            problems.append(CatalogProblem(str(path), line, "image and product_id must both be given."))
            continue
        file = _resolve(path.parent, image)
        if not file.is_file():
            problems.append(CatalogProblem(str(path), line, f"query image {image} does not exist."))
            continue
        queries.append(Query(file, Path(image).as_posix(), pid, line))
    if not queries:
        detail = f" ({problems[0]})" if problems else ""
        raise UserError(f"query file {path} has no usable row{detail}.")
    return QuerySet(root=path.parent, queries=queries, problems=problems)


def check_queries_against(queries: QuerySet, catalog: Catalog) -> list[CatalogProblem]:
    """Queries whose expected product is not in the catalog (they can never be answered right)."""
    return [
        CatalogProblem(str(queries.root / QUERIES_CSV), q.row, f"product {q.product_id!r} is not in the catalog.")
        for q in queries.queries
        if q.product_id not in catalog.products
    ]


def write_catalog_csv(
    path: str | os.PathLike,
    rows: Iterable[dict[str, Any]],
    *,
    metadata_columns: Sequence[str] = (),
) -> int:
    """Write a `catalog.csv` atomically; each row has product_id, image, title, category and the
    metadata columns. Returns the number of rows written."""
    columns = [*CATALOG_FIELDS, *metadata_columns]
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
            n += 1
    return n


def prepare_catalog(source: str | os.PathLike, out: str | os.PathLike, *, queries: str | os.PathLike | None = None) -> dict[str, Any]:
    """Copy a real catalog's description (not its images) into the pipeline's catalog folder: `out/catalog.csv`
    with absolute image paths and the metadata columns, and `out/queries.csv` when the source has one
    (`queries`, else a queries.csv beside the source catalog.csv). Rows with a missing image are reported
    and left out. The folder is written beside `out` and renamed into place.

    Returns:
        Counts and the rows left out.

    Raises:
        UserError: if the source catalog or query file is unusable.
    """
    catalog = load_catalog(source)
    src_root = Path(catalog.root)
    query_path = Path(queries) if queries else src_root / QUERIES_CSV
    query_set = read_queries(query_path) if (queries or query_path.is_file()) else None
    meta_columns = sorted({k for p in catalog.products.values() for k in p.metadata})
    rows = [
        {
            "product_id": pid,
            "image": str(view.path.resolve()),
            "title": catalog.products[pid].title,
            "category": catalog.products[pid].category,
            **catalog.products[pid].metadata,
        }
        for pid, view in catalog.views()
    ]
    with atomic_path(out, is_dir=True) as tmp:
        write_catalog_csv(tmp / CATALOG_CSV, rows, metadata_columns=meta_columns)
        if query_set is not None:
            write_queries_csv(tmp / QUERIES_CSV, [(str(q.path.resolve()), q.product_id) for q in query_set.queries])
    problems = [*catalog.problems, *(query_set.problems if query_set else [])]
    return {
        "products": len(catalog),
        "catalog_images": len(rows),
        "query_images": len(query_set) if query_set else 0,
        "skipped_rows": [str(p) for p in problems],
    }


def write_queries_csv(path: str | os.PathLike, rows: Iterable[tuple[str, str]]) -> int:
    """Write a `queries.csv` (image, product_id) atomically. Returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "product_id"])
        for image, pid in rows:
            writer.writerow([image, pid])
            n += 1
    return n
