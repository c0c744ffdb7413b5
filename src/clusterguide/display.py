"""Plain-text tables for the terminal (the fit's metrics, layer lists, run info)."""

from __future__ import annotations

import math

from clusterguide.metrics import FIDELITY_GOAL, RECALL_SHARE_GOAL, meets_goal


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells
    ]
    return "\n".join(lines)


def metrics_table(metrics: dict, names: dict[str, str] | None = None) -> str:
    names = names or {}
    headers = [
        "cluster",
        "name",
        "size",
        "p_c",
        "fidelity",
        "norm_ratio",
        "precision",
        "recall",
        "recall_ceiling",
        "recall_raw",
        "raw_ceiling",
        "corr_fidelity",
        "corr_recall",
    ]
    keys = [
        "size",
        "share",
        "fidelity",
        "norm_ratio",
        "precision",
        "recall",
        "recall_ceiling",
        "recall_raw",
        "recall_raw_ceiling",
        "corrected_fidelity",
        "corrected_recall",
    ]
    rows = [[r["id"], names.get(r["id"], "")] + [r.get(k) for k in keys] for r in metrics.get("clusters", [])]
    note = (
        "precision/recall: k=5, PCA-16 of the layer's features, vs fresh exact samples of the cluster; *_raw: the "
        "same in the space the split clustered in (full features, or its stored PCA in a reduced run); "
        "*ceiling: what independent exact samples score; corr_*: the same samples with --method corrected"
    )
    goal = goal_line(metrics.get("clusters", []))
    return table(headers, rows) + "\n" + note + (f"\n{goal}" if goal else "")


def goal_line(rows: list[dict]) -> str:
    """How many clusters meet both of issue 12's bars, with the mapping and with ``--method
    corrected``, naming those short of them; empty when no row has the figures."""
    parts = []
    for label, prefix in (("the mapping", ""), ("--method corrected", "corrected_")):
        verdicts = {r["id"]: meets_goal(r, prefix) for r in rows}
        judged = [c for c, ok in verdicts.items() if ok is not None]
        if not judged:
            continue
        short = [c for c in judged if not verdicts[c]]
        parts.append(
            f"{label} {len(judged) - len(short)} of {len(judged)}"
            + (f" (short: {', '.join(map(str, short))})" if short else "")
        )
    if not parts:
        return ""
    return f"fidelity >= {FIDELITY_GOAL} and recall >= {RECALL_SHARE_GOAL} x ceiling: " + "; ".join(parts)
