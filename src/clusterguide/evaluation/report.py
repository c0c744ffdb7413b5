"""One self-contained HTML page for an evaluation: sample grids, Tables 1 and 2, histograms.

Images are embedded as base64 PNG and plots are drawn here as inline SVG, so the page needs no
other file, no network and no plotting library.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import UTC, datetime

import numpy as np

from clusterguide.baselines.model import TrainedBaseline
from clusterguide.evaluation.results import Evaluation, Table1Row
from clusterguide.evaluation.tables import (
    PRIOR,
    describe_setting,
    relative_diversity,
    table1_images,
    table2_images,
)
from clusterguide.imaging import grid_image
from clusterguide.sampler import ClusterSampler

COLORS = {
    "imle": "#1f77b4",
    "corrected": "#17becf",
    "exact": "#d62728",
    PRIOR: "#8c8c8c",
    "clustergan": "#ff7f0e",
    "selfcond": "#8c564b",
}
BAR_COLORS = {
    "clusterguide": "#1f77b4",
    "ganspace": "#2ca02c",
    "sefa": "#9467bd",
    "clustergan": "#ff7f0e",
    "selfcond": "#8c564b",
    "random": "#8c8c8c",
}
Trained = dict[str, TrainedBaseline] | None  # trained baselines by method; None: the shipped ones
PAPER_YAW = 0.95  # the paper's Table 2: share of 'pose right' (yaw at least 10 degrees) images, ours


def png_data_uri(images: np.ndarray, ncol: int = 8, scale: int = 2) -> str:
    buf = io.BytesIO()
    grid_image(images, ncol=min(ncol, len(images)), scale=scale).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


# ---- SVG -----------------------------------------------------------------------------------------


def _svg_text(x: float, y: float, text: str, size: int, anchor: str = "start", fill: str = "#222") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">'
        f"{_esc(text)}</text>"
    )


def svg_histograms(
    series: list[tuple[str, list, str]],
    lo: float,
    hi: float,
    bins: int = 24,
    width: int = 170,
    height: int = 64,
) -> str:
    """Overlaid step histograms (density per series) of ``(label, values, colour)`` on [lo, hi]."""
    pad_b, pad_t = 14, 4
    edges = np.linspace(lo, hi, bins + 1)
    dens = []
    for _, values, _ in series:
        v = np.asarray([x for x in values if x is not None], dtype=np.float64)
        counts = np.histogram(np.clip(v, lo, hi), bins=edges)[0] if len(v) else np.zeros(bins)
        dens.append(counts / max(len(v), 1))
    top = max([d.max() for d in dens] + [1e-9])

    def sx(x: float) -> float:
        return (x - lo) / (hi - lo) * width

    def sy(d: float) -> float:
        return pad_t + (height - pad_b - pad_t) * (1 - d / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="hist">',
        f'<line x1="0" y1="{height - pad_b}" x2="{width}" y2="{height - pad_b}" stroke="#bbb"/>',
    ]
    for (label, _, color), d in zip(series, dens, strict=True):
        pts = [f"{sx(edges[0]):.1f},{sy(0):.1f}"]
        for i in range(bins):
            pts += [f"{sx(edges[i]):.1f},{sy(d[i]):.1f}", f"{sx(edges[i + 1]):.1f},{sy(d[i]):.1f}"]
        pts.append(f"{sx(edges[-1]):.1f},{sy(0):.1f}")
        fill = color if label != PRIOR else "none"
        opacity = "0.18" if label != PRIOR else "0"
        dash = ' stroke-dasharray="3,2"' if label == PRIOR else ""
        parts.append(
            f'<polyline points="{" ".join(pts)}" fill="{fill}" fill-opacity="{opacity}" '
            f'stroke="{color}" stroke-width="1.3"{dash}><title>{_esc(label)}</title></polyline>'
        )
    if lo < 0 < hi:
        parts.append(
            f'<line x1="{sx(0):.1f}" y1="{pad_t}" x2="{sx(0):.1f}" y2="{height - pad_b}" stroke="#ddd"/>'
        )
    for x, anchor in ((lo, "start"), (hi, "end")):
        parts.append(_svg_text(sx(x), height - 2, f"{x:.3g}", 10, anchor, "#555"))
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(
    rows: list[tuple[str, float, str]], reference: tuple[str, float] | None = None, width: int = 560
) -> str:
    """Horizontal bars of shares in [0, 1]: ``(label, share, colour)``; an optional dashed reference."""
    label_w, bar_h, gap = 150, 18, 6
    plot_w = width - label_w - 50
    height = len(rows) * (bar_h + gap) + 22
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="bars">']
    for i, (label, share, color) in enumerate(rows):
        y = i * (bar_h + gap) + 4
        w = max(0.0, min(1.0, share or 0.0)) * plot_w
        parts.append(_svg_text(label_w - 6, y + bar_h - 5, label, 12, "end"))
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(_svg_text(label_w + w + 4, y + bar_h - 5, _pct(share), 12))
    axis_y = len(rows) * (bar_h + gap) + 6
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#bbb"/>')
    for t in (0, 0.5, 1):
        x = label_w + t * plot_w
        parts.append(_svg_text(x, axis_y + 13, f"{int(t * 100)}%", 10, "middle", "#555"))
    if reference:
        text, value = reference
        x = label_w + value * plot_w
        parts.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{axis_y}" stroke="#000" stroke-dasharray="4,3">'
            f"<title>{_esc(text)}</title></line>"
        )
    parts.append("</svg>")
    return "".join(parts)


# ---- the page ------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f4f4f4} td.l,th.l{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.card{border:1px solid #e4e4e4;padding:6px;border-radius:4px}
.card img{image-rendering:pixelated;display:block}
.cap{font-size:12px;color:#444;margin:2px 0 4px} .muted{color:#777;font-size:12px}
.key span{display:inline-block;margin-right:14px;font-size:12px}
.key i{display:inline-block;width:14px;height:3px;vertical-align:middle;margin-right:4px}
"""


def _rows_by_cluster(evaluation: Evaluation) -> dict[str, dict[str, Table1Row]]:
    out: dict[str, dict[str, Table1Row]] = {}
    for r in evaluation.table1:
        out.setdefault(r.cluster, {})[r.method] = r
    return out


def _tag(name: str, content: str, cls: str | None = None, **attrs: str) -> str:
    """``<name class=cls ...>content</name>``; ``content`` must already be escaped."""
    extra = "".join(f" {k}='{_esc(v)}'" for k, v in attrs.items())
    return f"<{name}{f' class={cls!r}' if cls else ''}{extra}>{content}</{name}>"


def _row(cells: list[str]) -> str:
    return "<tr>" + "".join(cells) + "</tr>"


def _left(text) -> str:
    return _tag("td", _esc(text), "l")


def _attr_head(a: dict) -> str:
    return _tag("th", f"{_esc(a['name'])}<br>{_tag('span', _esc(a['unit']), 'muted')}")


def _table1_html(evaluation: Evaluation) -> str:
    attrs = evaluation.probe["attributes"]
    heads = [_tag("th", h, "l") for h in ("cluster", "name", "method")]
    heads += [_tag("th", h) for h in ("p<sub>c</sub>", "acceptance", "detected", "diversity")]
    lines = ["<table>", _row(heads + [_attr_head(a) for a in attrs])]
    for r in evaluation.table1:
        cells = [_left(r.cluster), _left(r.name), _left(r.method), _tag("td", _num(r.share, 3))]
        if not r.measured:
            cells.append(_tag("td", f"skipped: {_esc(r.skipped)}", "l muted", colspan=str(3 + len(attrs))))
        else:
            cells += [_tag("td", _num(r.acceptance_rate, 3)), _tag("td", _pct(r.detection_rate))]
            cells.append(_tag("td", _num(r.diversity, 3)))
            for a in attrs:
                st = r.stats[a["name"]]
                cells.append(_tag("td", "–" if st.mean is None else f"{_num(st.mean)} ± {_num(st.std)}"))
        lines.append(_row(cells))
    lines.append("</table>")
    return "\n".join(lines)


def _histograms_html(evaluation: Evaluation) -> str:
    attrs = evaluation.probe["attributes"]
    by_cluster = _rows_by_cluster(evaluation)
    prior = by_cluster.get(PRIOR, {}).get(PRIOR)
    key = "".join(f"<span><i style='background:{c}'></i>{_esc(m)}</span>" for m, c in COLORS.items())
    lines = [
        f"<p class='key'>{key} (dashed: random prior samples, in every cell)</p>",
        "<table>",
        _row([_tag("th", "cluster", "l")] + [_attr_head(a) for a in attrs]),
    ]
    ranges = {}
    for a in attrs:
        vals = [x for r in evaluation.table1 if r.measured for x in r.values[a["name"]] if x is not None]
        lo, hi = np.percentile(vals, [1, 99]) if vals else (0.0, 1.0)
        ranges[a["name"]] = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    for cluster, methods in by_cluster.items():
        if cluster == PRIOR:
            continue
        name = methods[next(iter(methods))].name
        cells = [_tag("td", f"{_esc(cluster)}<br>{_tag('span', _esc(name), 'muted')}", "l")]
        for a in attrs:
            series = [
                (m, r.values[a["name"]], COLORS.get(m, "#333")) for m, r in methods.items() if r.measured
            ]
            if prior is not None:
                series.append((PRIOR, prior.values[a["name"]], COLORS[PRIOR]))
            cells.append(_tag("td", svg_histograms(series, *ranges[a["name"]])))
        lines.append(_row(cells))
    lines.append("</table>")
    return "\n".join(lines)


def _card(caption: str, images: np.ndarray, alt: str) -> str:
    """A captioned grid; ``caption`` must already be escaped."""
    img = f"<img src='{png_data_uri(images)}' alt='{_esc(alt)}'>"
    return _tag("div", _tag("div", caption, "cap") + img, "card")


def _grids_html(sampler: ClusterSampler, evaluation: Evaluation, per_row: int, trained: Trained) -> str:
    cards = []
    for cluster, methods in _rows_by_cluster(evaluation).items():
        for method, r in methods.items():
            if not r.measured:
                continue
            if cluster == PRIOR or ":" in cluster:  # random samples, or a trained baseline's cluster
                title = r.name
            else:
                title = f"cluster {cluster}" + (f" ({r.name})" if r.name else "")
            caption = f"<b>{_esc(title)}</b> · {_esc(method)} · detected {_pct(r.detection_rate)}"
            cards.append(_card(caption, table1_images(sampler, evaluation, r, per_row, trained), title))
    return _tag("div", "".join(cards), "grid")


def _table2_html(sampler: ClusterSampler, evaluation: Evaluation, per_row: int, trained: Trained) -> str:
    out = []
    for block in evaluation.table2:
        attr = block.attribute
        heads = [
            _tag("th", "method", "l"),
            _tag("th", "setting", "l"),
            _tag("th", "share meeting the target"),
        ]
        more = ("detected", f"mean {_esc(attr)}", "diversity / random", "share on the selection set")
        heads += [_tag("th", h) for h in more]
        lines = [f"<h3>target <code>{_esc(block.target)}</code></h3>", "<table>", _row(heads)]
        for r in block.rows:
            cells = [_left(r.method), _left(describe_setting(r)), _tag("td", f"<b>{_pct(r.share)}</b>")]
            cells += [_tag("td", _pct(r.detection_rate)), _tag("td", _num(r.mean))]
            cells.append(_tag("td", _num(relative_diversity(block, r))))
            cells.append(_tag("td", _pct(r.select_share)))
            lines.append(_row(cells))
        lines.append("</table>")
        ref = ("the paper's result for 'pose right' (95%)", PAPER_YAW) if attr == "yaw" else None
        bars = [(r.method, r.share, BAR_COLORS.get(r.family, "#333")) for r in block.rows]
        lines.append(svg_bars(bars, ref))
        if ref:
            lines.append(
                _tag("p", "dashed line: the paper's Table 2, its method on yaw ('pose right'), 95%", "muted")
            )
        cards = []
        for r in block.rows:
            caption = f"<b>{_esc(r.method)}</b> · {_esc(describe_setting(r))}"
            cards.append(_card(caption, table2_images(sampler, evaluation, r, per_row, trained), r.method))
        lines.append(_tag("div", "".join(cards), "grid"))
        out.append("\n".join(lines))
    return "\n".join(out)


_TABLE1_NOTE = (
    "Mean ± standard deviation over images where the probe detected a face/object; "
    "p<sub>c</sub> is the cluster's share of the prior, acceptance the exact sampler's rate; "
    "diversity is the mean pairwise RMS pixel distance of the images shrunk to 16x16 (0..1), a crude "
    "check for collapse: compare it with the random row."
)


def _table2_note(cfg: dict) -> str:
    steps = ", ".join(f"{s:g}" for s in cfg["steps"])
    return (
        f"Same generator, probe and number of images ({cfg['n']}) for every row; images where nothing was "
        "detected count as misses. The cluster, the GANSpace/SeFa component, sign and step were chosen on a "
        f"separate selection stream ({cfg['select_n']} images per candidate; steps tried: {steps}; "
        f"{cfg['components']} components). Diversity / random: the row's pixel diversity over that of random "
        "samples; well below 1 means the images look alike."
    )


def _baselines_note(evaluation: Evaluation) -> str:
    parts = []
    for info in evaluation.baselines.values():
        if "skipped" in info:
            parts.append(f"{info['title']}: not compared ({info['skipped']})")
        else:
            parts.append(
                f"{info['title']}: trained from scratch here on {info['training_images']} images of "
                f"{info['generator']} at {info['size']} px, {info['steps']} steps in {info['minutes']} min on a CPU"
            )
    return "Trained baselines. " + "; ".join(parts) + "." if parts else ""


def _quality_html(evaluation: Evaluation) -> str:
    q = evaluation.quality
    if q is None:
        return ""
    heads = [_tag("th", "images", "l")] + [
        _tag("th", h) for h in ("px", "n", "detected", "KID ×1000", "± std", "diversity")
    ]
    lines = ["<table>", _row(heads)]
    for r in q.rows:
        cells = [
            _left(r.source),
            _tag("td", str(r.size)),
            _tag("td", str(r.n)),
            _tag("td", _pct(r.detection_rate)),
        ]
        cells += [
            _tag("td", _num(r.kid, 2)),
            _tag("td", _num(r.kid_std, 2)),
            _tag("td", _num(r.diversity, 3)),
        ]
        lines.append(_row(cells))
    lines.append("</table>")
    note = (
        f"KID: unbiased squared MMD (cubic polynomial kernel, ×1000) to {q.reference}, in the features of a "
        f"{q.features}: low-level image statistics, not semantics; 0 means indistinguishable. "
        "Detected: the probe's detection rate on the same images."
    )
    return _tag("p", _esc(note), "muted") + "\n".join(lines)


def build_report(
    sampler: ClusterSampler, evaluation: Evaluation, per_row: int = 16, trained: Trained = None
) -> str:
    """The HTML page (a string) for ``evaluation`` of ``sampler``'s run (``trained``: the trained
    baselines it compared, when they are not the shipped ones)."""
    cfg, fit, gen = evaluation.config, evaluation.fit, evaluation.generator
    probe = evaluation.probe
    attr_list = "".join(
        f"<li><b>{_esc(a['name'])}</b> ({_esc(a['unit'])}): {_esc(a['description'])}</li>"
        for a in probe["attributes"]
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = [
        f"run <code>{_esc(evaluation.run)}</code>",
        f"generator <b>{_esc(gen['name'])}</b>",
        f"clusters at <b>{_esc(fit['layer'])}</b>, k = {fit['clusters']}",
        f"probe <b>{_esc(probe['name'])}</b>",
        f"{cfg['n']} images per row, seed {cfg['seed']}",
        f"clusterguide {_esc(evaluation.version)}",
        stamp,
    ]
    title = f"clusterguide evaluation: {_esc(evaluation.run or '')}"
    sections = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        "<h1>Cluster-guided sampling: attribute evaluation</h1>",
        _tag("p", " · ".join(facts)),
        _tag("p", _esc(probe["description"]), "muted") + _tag("ul", attr_list, "muted"),
    ]
    if evaluation.baselines:
        sections.append(_tag("p", _esc(_baselines_note(evaluation)), "muted"))
    sections += [
        "<h2>Samples</h2>",
        _tag("p", "The first images of each row of Table 1 (the same images the table measured).", "muted"),
        _grids_html(sampler, evaluation, per_row, trained),
        "<h2>Table 1: attributes per cluster</h2>",
        _tag("p", _TABLE1_NOTE, "muted"),
        _table1_html(evaluation),
        "<h2>Attribute histograms</h2>",
        _histograms_html(evaluation),
    ]
    if evaluation.table2:
        sections += [
            "<h2>Table 2: share of images that meet a target</h2>",
            _tag("p", _table2_note(cfg), "muted"),
            _table2_html(sampler, evaluation, min(per_row, 8), trained),
        ]
    if evaluation.quality is not None:
        sections += [
            "<h2>Sample quality: the generator and the trained baselines</h2>",
            _quality_html(evaluation),
        ]
    sections.append("</body></html>")
    return "\n".join(sections)
