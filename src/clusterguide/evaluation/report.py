"""One self-contained HTML page for an evaluation: sample grids, Tables 1 and 2, histograms.

Images are embedded as base64 PNG and plots are drawn here as inline SVG, so the page needs no
other file, no network and no plotting library.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone

import numpy as np

from clusterguide.evaluation.tables import PRIOR, describe_setting, table1_images, table2_images
from clusterguide.imaging import grid_image
from clusterguide.sampler import ClusterSampler

COLORS = {"imle": "#1f77b4", "exact": "#d62728", PRIOR: "#8c8c8c"}
BAR_COLORS = {"clusterguide": "#1f77b4", "ganspace": "#2ca02c", "sefa": "#9467bd", "random": "#8c8c8c"}
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


def svg_histograms(
    series: list[tuple[str, list, str]], lo: float, hi: float, bins: int = 24, width: int = 170, height: int = 64
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
    sx = lambda x: (x - lo) / (hi - lo) * width  # noqa: E731
    sy = lambda d: pad_t + (height - pad_b - pad_t) * (1 - d / top)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="hist">',
             f'<line x1="0" y1="{height - pad_b}" x2="{width}" y2="{height - pad_b}" stroke="#bbb"/>']
    for (label, _, color), d in zip(series, dens):
        pts = [f"{sx(edges[0]):.1f},{sy(0):.1f}"]
        for i in range(bins):
            pts += [f"{sx(edges[i]):.1f},{sy(d[i]):.1f}", f"{sx(edges[i + 1]):.1f},{sy(d[i]):.1f}"]
        pts.append(f"{sx(edges[-1]):.1f},{sy(0):.1f}")
        fill = color if label != PRIOR else "none"
        opacity = "0.18" if label != PRIOR else "0"
        dash = ' stroke-dasharray="3,2"' if label == PRIOR else ""
        parts.append(f'<polyline points="{" ".join(pts)}" fill="{fill}" fill-opacity="{opacity}" '
                     f'stroke="{color}" stroke-width="1.3"{dash}><title>{_esc(label)}</title></polyline>')
    if lo < 0 < hi:
        parts.append(f'<line x1="{sx(0):.1f}" y1="{pad_t}" x2="{sx(0):.1f}" y2="{height - pad_b}" stroke="#ddd"/>')
    for x, anchor in ((lo, "start"), (hi, "end")):
        parts.append(f'<text x="{sx(x):.1f}" y="{height - 2}" font-size="10" text-anchor="{anchor}" fill="#555">{x:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(rows: list[tuple[str, float, str]], reference: tuple[str, float] | None = None, width: int = 560) -> str:
    """Horizontal bars of shares in [0, 1]: ``(label, share, colour)``; an optional dashed reference."""
    label_w, bar_h, gap = 150, 18, 6
    plot_w = width - label_w - 50
    height = len(rows) * (bar_h + gap) + 22
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="bars">']
    for i, (label, share, color) in enumerate(rows):
        y = i * (bar_h + gap) + 4
        w = max(0.0, min(1.0, share or 0.0)) * plot_w
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h - 5}" font-size="12" text-anchor="end">{_esc(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 5}" font-size="12">{_pct(share)}</text>')
    axis_y = len(rows) * (bar_h + gap) + 6
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#bbb"/>')
    for t in (0, 0.5, 1):
        x = label_w + t * plot_w
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 13}" font-size="10" text-anchor="middle" fill="#555">{int(t * 100)}%</text>')
    if reference:
        text, value = reference
        x = label_w + value * plot_w
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{axis_y}" stroke="#000" stroke-dasharray="4,3">'
                     f'<title>{_esc(text)}</title></line>')
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
.card{border:1px solid #e4e4e4;padding:6px;border-radius:4px} .card img{image-rendering:pixelated;display:block}
.cap{font-size:12px;color:#444;margin:2px 0 4px} .muted{color:#777;font-size:12px}
.key span{display:inline-block;margin-right:14px;font-size:12px}
.key i{display:inline-block;width:14px;height:3px;vertical-align:middle;margin-right:4px}
"""


def _rows_by_cluster(evaluation: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in evaluation["table1"]:
        out.setdefault(r["cluster"], {})[r["method"]] = r
    return out


def _table1_html(evaluation: dict) -> str:
    attrs = evaluation["probe"]["attributes"]
    head = "".join(f"<th>{_esc(a['name'])}<br><span class='muted'>{_esc(a['unit'])}</span></th>" for a in attrs)
    lines = [f"<table><tr><th class='l'>cluster</th><th class='l'>name</th><th class='l'>method</th><th>p<sub>c</sub></th>"
             f"<th>acceptance</th><th>detected</th>{head}</tr>"]
    for r in evaluation["table1"]:
        if "skipped" in r:
            cells = f"<td colspan='{2 + len(attrs)}' class='l muted'>skipped: {_esc(r['skipped'])}</td>"
        else:
            stats = "".join(
                f"<td>{_num(r['stats'][a['name']]['mean'])} ± {_num(r['stats'][a['name']]['std'])}</td>"
                if r["stats"][a["name"]]["mean"] is not None else "<td>–</td>"
                for a in attrs
            )
            cells = f"<td>{_num(r.get('acceptance_rate'), 3)}</td><td>{_pct(r['detection_rate'])}</td>{stats}"
        lines.append(f"<tr><td class='l'>{_esc(r['cluster'])}</td><td class='l'>{_esc(r['name'])}</td>"
                     f"<td class='l'>{_esc(r['method'])}</td><td>{_num(r.get('share'), 3)}</td>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _histograms_html(evaluation: dict) -> str:
    attrs = evaluation["probe"]["attributes"]
    by_cluster = _rows_by_cluster(evaluation)
    prior = by_cluster.get(PRIOR, {}).get(PRIOR)
    key = "".join(f"<span><i style='background:{c}'></i>{_esc(m)}</span>" for m, c in COLORS.items())
    head = "".join(f"<th>{_esc(a['name'])} <span class='muted'>{_esc(a['unit'])}</span></th>" for a in attrs)
    lines = [f"<p class='key'>{key} (dashed: random prior samples, in every cell)</p>",
             f"<table><tr><th class='l'>cluster</th>{head}</tr>"]
    ranges = {}
    for a in attrs:
        vals = [x for r in evaluation["table1"] if "values" in r for x in r["values"][a["name"]] if x is not None]
        lo, hi = (np.percentile(vals, [1, 99]) if vals else (0.0, 1.0))
        ranges[a["name"]] = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    for cluster, methods in by_cluster.items():
        if cluster == PRIOR:
            continue
        cells = []
        for a in attrs:
            series = [(m, r["values"][a["name"]], COLORS.get(m, "#333")) for m, r in methods.items() if "values" in r]
            if prior is not None:
                series.append((PRIOR, prior["values"][a["name"]], COLORS[PRIOR]))
            cells.append(f"<td>{svg_histograms(series, *ranges[a['name']])}</td>")
        name = methods[next(iter(methods))].get("name", "")
        lines.append(f"<tr><td class='l'>{_esc(cluster)}<br><span class='muted'>{_esc(name)}</span></td>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _grids_html(sampler: ClusterSampler, evaluation: dict, per_row: int) -> str:
    cards = []
    for cluster, methods in _rows_by_cluster(evaluation).items():
        for method, r in methods.items():
            if "skipped" in r:
                continue
            images = table1_images(sampler, evaluation, r, per_row)
            title = "random prior samples" if cluster == PRIOR else f"cluster {cluster}" + (f" ({r['name']})" if r["name"] else "")
            cards.append(f"<div class='card'><div class='cap'><b>{_esc(title)}</b> · {_esc(method)} · "
                         f"detected {_pct(r['detection_rate'])}</div><img src='{png_data_uri(images)}' alt='{_esc(title)}'></div>")
    return f"<div class='grid'>{''.join(cards)}</div>"


def _table2_html(sampler: ClusterSampler, evaluation: dict, per_row: int) -> str:
    out = []
    for block in evaluation["table2"]:
        attr = block["attribute"]
        lines = [f"<h3>target <code>{_esc(block['target'])}</code></h3>",
                 f"<table><tr><th class='l'>method</th><th class='l'>setting</th><th>share meeting the target</th>"
                 f"<th>faces/objects detected</th><th>mean {_esc(attr)}</th><th>share on the selection set</th></tr>"]
        for r in block["rows"]:
            lines.append(f"<tr><td class='l'>{_esc(r['method'])}</td><td class='l'>{_esc(describe_setting(r))}</td>"
                         f"<td><b>{_pct(r['share'])}</b></td><td>{_pct(r['detection_rate'])}</td>"
                         f"<td>{_num(r['mean'])}</td><td>{_pct(r['select_share'])}</td></tr>")
        lines.append("</table>")
        ref = ("the paper's result for 'pose right' (95%)", PAPER_YAW) if attr == "yaw" else None
        bars = [(r["method"], r["share"], BAR_COLORS.get(r["family"], "#333")) for r in block["rows"]]
        lines.append(svg_bars(bars, ref))
        if ref:
            lines.append("<p class='muted'>dashed line: the paper's Table 2, its method on yaw ('pose right'), 95%</p>")
        cards = []
        for r in block["rows"]:
            images = table2_images(sampler, evaluation, r, per_row)
            cards.append(f"<div class='card'><div class='cap'><b>{_esc(r['method'])}</b> · {_esc(describe_setting(r))}</div>"
                         f"<img src='{png_data_uri(images)}' alt='{_esc(r['method'])}'></div>")
        lines.append(f"<div class='grid'>{''.join(cards)}</div>")
        out.append("\n".join(lines))
    return "\n".join(out)


def build_report(sampler: ClusterSampler, evaluation: dict, per_row: int = 16) -> str:
    """The HTML page (a string) for ``evaluation`` of ``sampler``'s run."""
    cfg, fit, gen = evaluation["config"], evaluation["fit"], evaluation["generator"]
    probe = evaluation["probe"]
    attr_list = "".join(f"<li><b>{_esc(a['name'])}</b> ({_esc(a['unit'])}): {_esc(a['description'])}</li>"
                        for a in probe["attributes"])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>clusterguide evaluation: {_esc(evaluation.get('run') or '')}</title><style>{_CSS}</style></head><body>",
        "<h1>Cluster-guided sampling: attribute evaluation</h1>",
        f"<p>run <code>{_esc(evaluation.get('run'))}</code> · generator <b>{_esc(gen['name'])}</b> · "
        f"clusters at <b>{_esc(fit['layer'])}</b>, k = {fit['clusters']} · probe <b>{_esc(probe['name'])}</b> · "
        f"{cfg['n']} images per row, seed {cfg['seed']} · clusterguide {_esc(evaluation['version'])} · {stamp}</p>",
        f"<p class='muted'>{_esc(probe['description'])}</p><ul class='muted'>{attr_list}</ul>",
        "<h2>Samples</h2><p class='muted'>The first images of each row of Table 1 (the same images the table measured).</p>",
        _grids_html(sampler, evaluation, per_row),
        "<h2>Table 1: attributes per cluster</h2>"
        "<p class='muted'>Mean ± standard deviation over images where the probe detected a face/object; "
        "p<sub>c</sub> is the cluster's share of the prior, acceptance the exact sampler's rate.</p>",
        _table1_html(evaluation),
        "<h2>Attribute histograms</h2>",
        _histograms_html(evaluation),
    ]
    if evaluation["table2"]:
        sections += [
            "<h2>Table 2: share of images that meet a target</h2>",
            f"<p class='muted'>Same generator, probe and number of images ({cfg['n']}) for every row; images where "
            "nothing was detected count as misses. The cluster, the GANSpace/SeFa component, sign and step were chosen on "
            f"a separate selection stream ({cfg['select_n']} images per candidate; steps tried: "
            f"{', '.join(f'{s:g}' for s in cfg['steps'])}; {cfg['components']} components).</p>",
            _table2_html(sampler, evaluation, min(per_row, 8)),
        ]
    sections.append("</body></html>")
    return "\n".join(sections)
