"""The search page served at `/` by the query API: drop or choose a photo, see the top products as a
gallery with their scores. Plain HTML + JavaScript calling `POST /search`, `GET /categories` and the
product images at `GET /items/{id}/image`; no build step, no external resource (works offline).

It holds markup only; every behaviour it shows lives in `visionpipes.retail.serve.routes`.
"""

from __future__ import annotations

SEARCH_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Visual product search</title>
<style>
  :root { --fg: #1d2330; --muted: #687086; --accent: #2459d6; --bg: #f5f6f9; --card: #fff; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
  header { padding: 14px 24px; background: var(--card); border-bottom: 1px solid #dde1ea; display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 19px; margin: 0; }
  header span { color: var(--muted); font-size: 13px; }
  main { padding: 20px 24px; display: grid; grid-template-columns: 300px 1fr; gap: 24px; }
  #drop { display: block; border: 2px dashed #aab2c5; border-radius: 10px; background: var(--card); padding: 18px; text-align: center;
          cursor: pointer; transition: border-color .15s, background .15s; }
  #drop.over { border-color: var(--accent); background: #eef3ff; }
  #drop img { max-width: 100%; max-height: 220px; border-radius: 6px; display: none; margin: 0 auto 10px; }
  #drop p { margin: 6px 0; color: var(--muted); }
  .controls { margin-top: 14px; display: grid; grid-template-columns: auto 1fr; gap: 8px 10px; align-items: center; }
  select, input[type=file] { font: inherit; }
  #status { margin-top: 12px; font-size: 13px; color: var(--muted); min-height: 1.4em; }
  #status.error { color: #c0262d; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 14px; align-content: start; }
  .result { background: var(--card); border-radius: 10px; overflow: hidden; box-shadow: 0 1px 3px rgba(20,30,60,.12); }
  .result img { width: 100%; aspect-ratio: 1; object-fit: cover; display: block; background: #e8ebf2; }
  .result .body { padding: 8px 10px 10px; }
  .result .rank { float: right; color: var(--muted); font-size: 12px; }
  .result .pid { font-weight: 600; }
  .result .title { font-size: 12px; color: var(--muted); height: 2.8em; overflow: hidden; }
  .result .score { font-variant-numeric: tabular-nums; font-size: 13px; margin-top: 4px; }
  .bar { height: 5px; border-radius: 3px; background: #e1e5ee; margin-top: 3px; }
  .bar div { height: 100%; border-radius: 3px; background: var(--accent); }
  .empty { color: var(--muted); }
</style>
</head>
<body>
<header><h1>Visual product search</h1><span id="info"></span></header>
<main>
  <section>
    <label id="drop" for="file">
      <img id="preview" alt="query photo">
      <p><strong>Drop a photo here</strong></p>
      <p>or choose one:</p>
      <input type="file" id="file" name="file" accept="image/*">
    </label>
    <div class="controls">
      <label for="k">Results</label>
      <select id="k"><option>5</option><option selected>10</option><option>20</option></select>
      <label for="category">Category</label>
      <select id="category"><option value="">all categories</option></select>
    </div>
    <div id="status" role="status"></div>
  </section>
  <section id="results" aria-live="polite"><p class="empty">Results appear here.</p></section>
</main>
<script>
"use strict";
const drop = document.getElementById("drop");
const fileInput = document.getElementById("file");
const preview = document.getElementById("preview");
const statusEl = document.getElementById("status");
const results = document.getElementById("results");
const kSel = document.getElementById("k");
const catSel = document.getElementById("category");
let current = null;

function setStatus(text, isError) {
  statusEl.textContent = text;
  statusEl.className = isError ? "error" : "";
}

function card(hit, rank) {
  const el = document.createElement("article");
  el.className = "result";
  el.dataset.productId = hit.product_id;
  const img = document.createElement("img");
  img.alt = hit.title || hit.product_id;
  img.loading = "lazy";
  if (hit.image_url) img.src = hit.image_url;
  const body = document.createElement("div");
  body.className = "body";
  const pct = Math.max(0, Math.min(1, hit.score)) * 100;
  body.innerHTML = '<span class="rank"></span><div class="pid"></div><div class="title"></div>' +
    '<div class="score"></div><div class="bar"><div></div></div>';
  body.querySelector(".rank").textContent = "#" + rank;
  body.querySelector(".pid").textContent = hit.product_id;
  body.querySelector(".title").textContent = [hit.title, hit.category].filter(Boolean).join(" - ");
  body.querySelector(".score").textContent = "score " + hit.score.toFixed(3);
  body.querySelector(".bar div").style.width = pct.toFixed(1) + "%";
  el.append(img, body);
  return el;
}

async function search() {
  if (!current) return;
  const form = new FormData();
  form.append("image", current, current.name || "photo");
  const params = new URLSearchParams({ k: kSel.value });
  if (catSel.value) params.set("category", catSel.value);
  setStatus("Searching...");
  const t0 = performance.now();
  try {
    const resp = await fetch("search?" + params, { method: "POST", body: form });
    const data = await resp.json();
    if (!resp.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      throw new Error(detail || resp.statusText);
    }
    results.replaceChildren(...data.results.map((h, i) => card(h, i + 1)));
    if (!data.results.length) results.innerHTML = '<p class="empty">No product matches.</p>';
    setStatus(data.results.length + " results in " + Math.round(performance.now() - t0) + " ms");
    document.body.dataset.state = "done";
  } catch (err) {
    results.replaceChildren();
    setStatus(err.message, true);
    document.body.dataset.state = "error";
  }
}

function choose(file) {
  if (!file) return;
  current = file;
  preview.src = URL.createObjectURL(file);
  preview.style.display = "block";
  search();
}

fileInput.addEventListener("change", () => choose(fileInput.files[0]));
kSel.addEventListener("change", search);
catSel.addEventListener("change", search);
["dragenter", "dragover"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", e => choose(e.dataTransfer.files[0]));

fetch("categories").then(r => r.json()).then(data => {
  for (const c of data.categories) {
    if (!c) continue;
    const o = document.createElement("option");
    o.value = c; o.textContent = c;
    catSel.append(o);
  }
});
fetch("health").then(r => r.json()).then(h => {
  document.getElementById("info").textContent = h.products + " products, model " + h.model_version;
});
</script>
</body>
</html>
"""
