"""One report section per experiment: its table, its plot and the comparison with the published
claim (depth, separable, scaling, attention, context, and the proxy-task calibration).

Part of `benchmarks/architecture_study.py`; measures only, changes no library code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arch_study.config import StudyConfig
from arch_study.tables import _acc_cell, _plt, _pp, _save, _section_rows, _table, noise_pp
from visionpipes.core.nas.proxy import CLASSES, CONTEXT_CLASSES


def report_depth(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    sec = _section_rows(rows, "depth")
    plain = sorted((r for r in sec if r["name"].startswith("plain")), key=lambda r: int(r["name"].split("-")[1]))
    res = sorted((r for r in sec if r["name"].startswith("residual")), key=lambda r: int(r["name"].split("-")[1]))
    depths = [int(r["name"].split("-")[1]) for r in plain]
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.cm.viridis([i / max(1, len(depths) - 1) * 0.85 for i in range(len(depths))])
    for c, p, r, d in zip(colours, plain, res, depths):
        epochs = range(1, len(p["curve_train_loss"]) + 1)
        ax1.plot(epochs, p["curve_train_loss"], ".--", color=c, label=f"plain-{d}")
        ax1.plot(epochs, r["curve_train_loss"], ".-", color=c, label=f"residual-{d}")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (label smoothing 0.05)")
    ax1.set_title("Training loss: plain (dashed) vs residual (solid)")
    ax1.legend(fontsize=7)
    ax2.plot(depths, [r["val_accuracy"] for r in plain], "o--", label="plain")
    ax2.plot(depths, [r["val_accuracy"] for r in res], "o-", label="residual")
    ax2.set_xlabel("layers")
    ax2.set_ylabel("validation accuracy")
    ax2.set_xticks(depths)
    ax2.set_title("Final accuracy vs depth")
    ax2.legend()
    fig.tight_layout()
    _save(fig, out / "depth.png")

    table = _table(
        ["net", "layers", "params (k)", "MFLOPs", "train loss", "train acc %", "val acc %", "latency ms (48 px)"],
        [[r["name"].split("-")[0], r["name"].split("-")[1], f"{r['params'] / 1e3:.0f}", f"{r['mflops']:.1f}",
          f"{r['train_loss']:.3f}", _pp(r["train_accuracy"]), _acc_cell(r), f"{r['latency_ms']:.2f}"]
         for r in plain + res],
    )
    lo, hi = depths[0], depths[-1]
    p_lo, p_hi, r_lo, r_hi = plain[0], plain[-1], res[0], res[-1]
    plain_degrades = p_hi["train_loss"] > p_lo["train_loss"] + 0.02
    res_ok = r_hi["train_loss"] <= r_lo["train_loss"] + 0.02
    gap = [r["val_accuracy"] - p["val_accuracy"] for p, r in zip(plain, res)]
    if plain_degrades and res_ok:
        verdict = "**Agrees.**"
    elif plain_degrades or res_ok:
        verdict = "**Partly agrees.**"
    else:
        verdict = "**Disagrees.**"
    text = [
        "## 1. Depth without and with skip connections",
        "",
        "Published (He et al., 2016, *Deep Residual Learning*, Fig. 1 and 6, CIFAR-10): plain nets of 20, 32, 44, 56",
        "layers get *higher training error* the deeper they are (degradation, not overfitting); the same nets with",
        "identity shortcuts do not degrade and improve with depth (test error 8.75 % at 20 layers, 6.97 % at 56,",
        "6.43 % at 110).",
        "",
        f"Ours: CIFAR-style nets ({'/'.join(str(d) for d in depths)} layers, 3 stages of basic blocks built from",
        "`ResidualBlock(skip=False|True)`, identical otherwise), each trained with the proxy recipe for",
        f"{cfg.proxy.epochs} epochs. Training loss is the mean over the last epoch.",
        "",
        *table,
        "",
        "![depth](depth.png)",
        "",
        f"{verdict} Plain: training loss {p_lo['train_loss']:.3f} at {lo} layers vs {p_hi['train_loss']:.3f} at {hi}"
        f" ({'higher: the deeper plain net trains worse' if plain_degrades else 'not higher'}), validation accuracy"
        f" {_pp(p_lo['val_accuracy'])} % vs {_pp(p_hi['val_accuracy'])} %. Residual: {r_lo['train_loss']:.3f} vs"
        f" {r_hi['train_loss']:.3f} ({'no degradation' if res_ok else 'it degrades too'}), accuracy"
        f" {_pp(r_lo['val_accuracy'])} % vs {_pp(r_hi['val_accuracy'])} %. The shortcut's gain in validation"
        f" accuracy grows with depth: {', '.join(f'{d}: {100 * g:+.1f} pp' for d, g in zip(depths, gap))}.",
        "",
    ]
    return text


def report_separable(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    std, sep = sorted(_section_rows(rows, "separable"), key=lambda r: r["name"] != "standard 3x3")
    metrics = [("params", "parameters"), ("mflops", f"MFLOPs ({cfg.proxy.size} px)"),
               ("latency_ms", f"latency ({cfg.proxy.size} px)"), ("latency_large_ms", f"latency ({cfg.large_size} px)")]
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    ratios = [std[k] / sep[k] for k, _ in metrics]
    ax1.bar(range(len(metrics)), ratios, color="#1f77b4")
    for i, r in enumerate(ratios):
        ax1.annotate(f"{r:.1f}x", (i, r), ha="center", va="bottom")
    ax1.set_xticks(range(len(metrics)), [m for _, m in metrics], fontsize=8)
    ax1.set_ylabel("standard / depthwise separable")
    ax1.set_title("How much cheaper the separable net is")
    ax2.bar([0, 1], [std["val_accuracy"], sep["val_accuracy"]], color=["#7f7f7f", "#2ca02c"])
    ax2.set_xticks([0, 1], ["standard", "separable"])
    ax2.set_ylabel("validation accuracy")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    _save(fig, out / "separable.png")

    table = _table(
        ["convolutions", "params (k)", f"MFLOPs {cfg.proxy.size} px", f"MFLOPs {cfg.large_size} px",
         f"latency ms {cfg.proxy.size} px", f"latency ms {cfg.large_size} px", "val acc %"],
        [[r["name"], f"{r['params'] / 1e3:.0f}", f"{r['mflops']:.1f}", f"{r['mflops_large']:.0f}",
          f"{r['latency_ms']:.2f}", f"{r['latency_large_ms']:.2f}", _acc_cell(r)] for r in (std, sep)],
    )
    d_acc = sep["val_accuracy"] - std["val_accuracy"]
    noise = noise_pp(std)
    cheaper = ratios[0] > 4 and ratios[1] > 4
    lat_less = ratios[3] < ratios[1]
    if cheaper and d_acc * 100 >= -max(3.0, noise):
        verdict = "**Agrees**" if lat_less else "**Agrees on params/FLOPs/accuracy**"
    elif cheaper:
        verdict = "**Partly agrees** (much cheaper, but loses more accuracy than published)"
    else:
        verdict = "**Disagrees**"
    return [
        "## 2. Standard vs depthwise separable convolutions",
        "",
        "Published (Howard et al., 2017, *MobileNets*, Table 4, ImageNet): the same 28-layer net with depthwise",
        "separable instead of standard convolutions has 4.2 M vs 29.3 M parameters (7x fewer) and 569 M vs 4866 M",
        "mult-adds (8.6x fewer) for 70.6 % vs 71.7 % top-1 (-1.1 points). Later work (Ma et al., 2018, *ShuffleNet V2*)",
        "showed that FLOPs overstate the speed-up: depthwise convolutions are memory-bound, so latency falls less.",
        "",
        "Ours: a MobileNetV1-style stack (width 0.5, a 3x3/2 stem and 7 layers, no shortcuts) with `ConvNormAct`",
        f"3x3 or `DepthwiseSeparableConv`; batch-1 CPU latency, {cfg.latency_threads} thread, median of interleaved runs.",
        "",
        *table,
        "",
        "![separable](separable.png)",
        "",
        f"{verdict}: {ratios[0]:.1f}x fewer parameters and {ratios[1]:.1f}x fewer FLOPs for {100 * d_acc:+.1f} points"
        f" of accuracy (noise: about ±{noise:.1f} points). The latency falls only {ratios[2]:.1f}x at"
        f" {cfg.proxy.size} px and {ratios[3]:.1f}x at {cfg.large_size} px: "
        + ("less than the FLOPs, as ShuffleNet V2 observed." if lat_less
           else "as much as the FLOPs or more, unlike ShuffleNet V2's observation."),
        "",
    ]


def report_scaling(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    sec = _section_rows(rows, "scaling")
    base, others = sec[0], sec[1:]
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r, c in zip(sec, ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c"]):
        ax1.scatter([r["params"] / 1e6], [r["val_accuracy"]], color=c, s=50)
        ax1.annotate(r["name"].split(" (")[0], (r["params"] / 1e6, r["val_accuracy"]), textcoords="offset points",
                     xytext=(5, 3), fontsize=8)
        ax2.plot(range(1, len(r["curve_val_accuracy"]) + 1), r["curve_val_accuracy"], color=c, label=r["name"])
    ax1.set_xlabel("parameters (M)")
    ax1.set_ylabel("validation accuracy")
    ax1.set_title("Depth vs width vs cardinality")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation accuracy")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "scaling.png")

    table = _table(
        ["net", "params (M)", "MFLOPs", "latency ms", "train loss", "val acc %"],
        [[r["name"], f"{r['params'] / 1e6:.2f}", f"{r['mflops']:.1f}", f"{r['latency_ms']:.2f}", f"{r['train_loss']:.3f}",
          _acc_cell(r)] for r in sec],
    )
    ranked = sorted(others, key=lambda r: -r["val_accuracy"])
    noise = noise_pp(ranked[0])

    def short(r: dict[str, Any]) -> str:
        return r["name"].split(" (")[0]

    margin = 100 * (ranked[0]["val_accuracy"] - ranked[1]["val_accuracy"])
    card = next(r for r in others if r["name"].startswith("cardinality"))
    beaten = [short(r) for r in others if 100 * (card["val_accuracy"] - r["val_accuracy"]) > noise]
    if ranked[0] is card and margin > noise:
        verdict = "**Agrees**: more cardinality is the best use of the extra parameters, beyond noise"
    elif ranked[0] is card:
        verdict = (f"**Consistent, but only partly resolved**: cardinality ranks first, {margin:.1f} points ahead of"
                   f" {short(ranked[1])} (within noise)"
                   + (f"; it beats {' and '.join(beaten)} beyond noise" if beaten else ""))
    elif 100 * (ranked[0]["val_accuracy"] - card["val_accuracy"]) > noise:
        verdict = f"**Disagrees**: {short(ranked[0])} beats cardinality beyond noise"
    else:
        verdict = f"**Not resolved**: {short(ranked[0])} ranks first, but cardinality is within noise of it"
    pmin, pmax = min(r["params"] for r in others), max(r["params"] for r in others)
    ranking = ", ".join(f"{short(r)} {_pp(r['val_accuracy'])} %" for r in ranked)
    return [
        "## 3. Depth vs width vs cardinality at equal parameters",
        "",
        "Published (Xie et al., 2017, *ResNeXt*, Table 4, ImageNet): at about twice the complexity of ResNet-101",
        "(22.0 % top-1 error), going deeper (ResNet-200: 21.7 %) or wider (21.3 %) helps less than increasing the",
        "cardinality (2x64d: 20.7 %, 64x4d: 20.4 %).",
        "",
        "Ours: a bottleneck net with one block per stage (baseline), and three ways to about double its",
        f"parameters ({pmin / 1e6:.2f}-{pmax / 1e6:.2f} M): two blocks per stage, wider stages, or a grouped 3x3",
        "conv of 8 groups whose width is matched to the same parameter count.",
        "",
        *table,
        "",
        "![scaling](scaling.png)",
        "",
        f"{verdict} (ranking: {ranking};"
        f" baseline {_pp(base['val_accuracy'])} %; noise about ±{noise:.1f} points).",
        "",
    ]


def report_attention(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    sec = _section_rows(rows, "attention")
    none = next(r for r in sec if r["name"] == "none")
    others = [r for r in sec if r is not none]
    noise = noise_pp(none)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r, colour in zip(others, ["#1f77b4", "#2ca02c", "#d62728"]):
        gain = 100 * (r["val_accuracy"] - none["val_accuracy"])
        costs = [100 * (r[k] / none[k] - 1) for k in ("latency_ms", "latency_large_ms")]
        ax.plot(costs, [gain, gain], "-", color=colour, lw=1, zorder=2)
        ax.scatter(costs[:1], [gain], marker="o", color=colour, zorder=3, label=f"{r['name']}, {cfg.proxy.size} px")
        ax.scatter(costs[1:], [gain], marker="s", color=colour, zorder=3, label=f"{r['name']}, {cfg.large_size} px")
    ax.axhspan(-noise, noise, color="#dddddd", alpha=0.6, zorder=0, label="noise")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("latency cost vs no attention (%)")
    ax.set_ylabel("accuracy gain vs no attention (points)")
    ax.set_title("Attention: accuracy gain vs latency cost")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "attention.png")

    table = _table(
        ["attention", "params (k)", "MFLOPs", "val acc %", "gain (pp)", f"latency ms {cfg.proxy.size} px",
         f"cost {cfg.proxy.size} px", f"latency ms {cfg.large_size} px", f"cost {cfg.large_size} px"],
        [[r["name"], f"{r['params'] / 1e3:.0f}", f"{r['mflops']:.1f}", _acc_cell(r),
          f"{100 * (r['val_accuracy'] - none['val_accuracy']):+.1f}", f"{r['latency_ms']:.2f}",
          f"{100 * (r['latency_ms'] / none['latency_ms'] - 1):+.0f} %", f"{r['latency_large_ms']:.2f}",
          f"{100 * (r['latency_large_ms'] / none['latency_large_ms'] - 1):+.0f} %"] for r in sec],
    )
    lines, words = [], {}
    for r in others:
        gain = 100 * (r["val_accuracy"] - none["val_accuracy"])
        if gain > noise:
            words[r["name"]] = "agrees (a gain beyond noise)"
        elif gain < -noise:
            words[r["name"]] = "disagrees (a loss beyond noise)"
        else:
            words[r["name"]] = f"not resolved ({'a gain' if gain > 0 else 'no gain'} within noise)"
        lines.append(f"- {r['name']}: {gain:+.1f} points, {words[r['name']]}, for"
                     f" {100 * (r['latency_ms'] / none['latency_ms'] - 1):+.0f} % latency at {cfg.proxy.size} px and"
                     f" {100 * (r['latency_large_ms'] / none['latency_large_ms'] - 1):+.0f} % at {cfg.large_size} px,"
                     f" {100 * (r['mflops'] / none['mflops'] - 1):+.1f} % FLOPs and"
                     f" {100 * (r['params'] / none['params'] - 1):+.1f} % parameters.")
    verdict = "**Verdicts** (noise about ±" + f"{noise:.1f} points): " + "; ".join(
        f"{name} {word}" for name, word in words.items()) + "."
    return [
        "## 4. Attention: SE, CBAM, self-attention vs none",
        "",
        "Published: SE blocks take ResNet-50 from 24.80 % to 23.29 % top-1 error on ImageNet for 3.87 vs 3.86",
        "GFLOPs (Hu et al., 2018, *Squeeze-and-Excitation Networks*, Table 2); CBAM takes it from 24.56 % to 22.66 %",
        "(SE: 23.14 %) (Woo et al., 2018, *CBAM*); replacing the last stage's 3x3 convs by multi-head self-attention",
        "improves ResNet-50 on COCO and ImageNet (Srinivas et al., 2021, *BoTNet*). All claim a small cost; FLOP",
        "counts miss the element-wise and pooling work these blocks add.",
        "",
        "Ours: the proxy calibration's small ResNet (one basic block per stage, 32-256 channels) with SE or CBAM in",
        "every block, or self-attention in the stride-16 and stride-32 blocks.",
        "",
        *table,
        "",
        "![attention](attention.png)",
        "",
        verdict,
        "",
        *lines,
        "",
    ]


def report_context(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    ctx = {r["name"]: r for r in _section_rows(rows, "context", "context")}
    ctrl = {r["name"]: r for r in _section_rows(rows, "context", "proxy")}
    heads = ["plain", "dilated", "aspp"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = range(len(heads))
    ax.bar([x - 0.2 for x in xs], [ctx[h]["val_accuracy"] for h in heads], 0.4,
           label=f"large-context task ({len(CONTEXT_CLASSES)} classes, chance 0.5)")
    if ctrl:
        ax.bar([x + 0.2 for x in xs], [ctrl[h]["val_accuracy"] for h in heads], 0.4,
               label=f"proxy task ({len(CLASSES)} classes, chance 0.125)")
    ax.set_xticks(list(xs), [f"{h}\nRF {ctx[h]['receptive_field']} px" for h in heads])
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Context heads at output stride 4")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, out / "context.png")

    table = _table(
        ["head", "params (k)", "MFLOPs", "receptive field (px)", "latency ms", "context task acc %",
         "proxy task acc %"],
        [[h, f"{ctx[h]['params'] / 1e3:.0f}", f"{ctx[h]['mflops']:.1f}", str(ctx[h]["receptive_field"]),
          f"{ctx[h]['latency_ms']:.2f}", _acc_cell(ctx[h]), _acc_cell(ctrl[h]) if h in ctrl else "-"] for h in heads],
    )
    noise = noise_pp(ctx["plain"])
    gains = {h: 100 * (ctx[h]["val_accuracy"] - ctx["plain"]["val_accuracy"]) for h in ("dilated", "aspp")}
    if all(g > noise for g in gains.values()):
        verdict = "**Agrees**"
    elif any(g > noise for g in gains.values()):
        verdict = "**Partly agrees**"
    else:
        verdict = "**Not resolved / disagrees**"
    lo, hi = (int(cfg.proxy.size * d) for d in (0.5, 0.7))
    control = ", ".join(f"{h} {_pp(ctrl[h]['val_accuracy'])} %" for h in heads) if ctrl else ""
    return [
        "## 5. ASPP and dilation vs plain convolutions on a task that needs context",
        "",
        "Published (Chen et al., 2017/2018, *DeepLab* v2 and v3): atrous (dilated) convolution enlarges the field of",
        "view without adding parameters or losing resolution, and atrous spatial pyramid pooling (parallel rates",
        "plus image pooling) captures context at several scales; both raise segmentation mIoU on PASCAL VOC over",
        "heads without them.",
        "",
        f"Ours: a 2-class task where two identical discs {lo}-{hi} px apart in a {cfg.proxy.size} px image are",
        "labelled by the orientation of the pair (`make_context_dataset`): a unit that sees one disc cannot tell.",
        "One trunk at output stride 4, then a plain head (two 3x3 convs), the same head dilated (rates 2, 4: same",
        "parameters) or ASPP (rates 2, 4, 6 + image pooling, half width). Receptive field: support of the gradient of",
        "the centre unit. The same three nets on the 8-class proxy task are the control.",
        "",
        *table,
        "",
        "![context](context.png)",
        "",
        f"{verdict}: on the large-context task dilation gives {gains['dilated']:+.1f} points and ASPP"
        f" {gains['aspp']:+.1f} points over the plain head (noise about ±{noise:.1f} points)"
        + (f"; on the proxy task (control) the three heads reach {control}." if ctrl else "."),
        "",
    ]


def report_calibration(rows: dict[str, dict[str, Any]], out: Path, cfg: StudyConfig) -> list[str]:
    sec = _section_rows(rows, "calibration")
    small = sec[0]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in sec:
        ax.plot(range(1, len(r["curve_val_accuracy"]) + 1), r["curve_val_accuracy"], "o-", ms=3, label=r["name"])
    ax.axhline(1 / len(CLASSES), color="k", lw=0.6, ls=":", label="chance")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("The proxy budget: reference nets")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "calibration.png")
    table = _table(
        ["model", "params (M)", "MFLOPs", "val acc %", "train loss", "wall s / run", "CPU s / run"],
        [[r["name"], f"{r['params'] / 1e6:.2f}", f"{r['mflops']:.1f}", _acc_cell(r), f"{r['train_loss']:.3f}",
          f"{r['train_seconds']:.0f}", f"{r['train_cpu_seconds']:.0f}"] for r in sec],
    )
    inside = 0.7 <= small["val_accuracy"] <= 0.9
    return [
        "## 0. The proxy task and its budget",
        "",
        f"The budget every model of this study (and every trial of `vp-core search`) gets. Chance is"
        f" {100 / len(CLASSES):.1f} %. Wall seconds are per training run on the threads given above (with"
        " other runs beside it when there are several processes); CPU seconds add up all threads.",
        "",
        *table,
        "",
        "![calibration](calibration.png)",
        "",
        f"The small ResNet reaches {_pp(small['val_accuracy'])} % "
        + ("(inside the 70-90 % the calibration aimed at: far above chance, far from 100 %)" if inside
           else "(outside the 70-90 % the calibration aimed at)")
        + f" in {small['train_seconds']:.0f} s wall and {small['train_cpu_seconds']:.0f} CPU-s per run.",
        "",
    ]


REPORTERS = {
    "calibration": report_calibration,
    "depth": report_depth,
    "separable": report_separable,
    "scaling": report_scaling,
    "attention": report_attention,
    "context": report_context,
}
