"""A static HTML page of a Grafana dashboard's panels, drawn from a live Prometheus: each
timeseries panel's queries run over a time range (query_range) and drawn as SVG lines, each stat
panel's last value, text panels as text, at the dashboard's grid positions. No Grafana: what a
headless browser can render into a picture of the dashboard (README's screenshot), and what the
tests use to check that every panel of examples/grafana-dashboard.json draws data.

    page = render(dashboard_json, prometheus_url, start, end)   # HTML text, and per panel
"""
from __future__ import annotations

import html
import json
import math
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

COLS, ROW_PX, WIDTH_PX = 24, 34, 1600
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#705da0", "#37872d", "#fade2a")


@dataclass
class Panel:
    """What one panel drew: its title and, per query, the series it got."""
    title: str
    kind: str
    series: list[tuple[str, list[tuple[float, float]]]] = field(default_factory=list)


def _query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    q = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                "step": f"{step:g}"})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def _legend(fmt: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt or "")
    return text.strip() or ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__")


def _fmt(v: float, unit: str) -> str:
    if math.isnan(v):
        return "-"
    if unit == "percentunit":
        return f"{v * 100:.3g}%"
    scale = {"bps": ("b/s", 1000), "bytes": ("B", 1024), "pps": ("p/s", 1000),
             "ops": ("/s", 1000), "s": ("s", 0)}.get(unit)
    if scale is None:
        return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"
    suffix, base = scale
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    for prefix in ("", "k", "M", "G", "T"):
        if abs(v) < base:
            return f"{v:.3g} {prefix}{suffix}"
        v /= base
    return f"{v:.3g} P{suffix}"


def _svg(series: list[tuple[str, list[tuple[float, float]]]], w: int, h: int, unit: str,
         start: float, end: float) -> str:
    values = [v for _, pts in series for _, v in pts if not math.isnan(v)]
    top = max(values, default=1.0) or 1.0
    bottom = min(0.0, min(values, default=0.0))
    span = (top - bottom) or 1.0
    plot_w, plot_h = w - 70, h

    def xy(t: float, v: float) -> str:
        return (f"{60 + (t - start) / max(end - start, 1e-9) * plot_w:.1f},"
                f"{plot_h - 4 - (v - bottom) / span * (plot_h - 12):.1f}")
    parts = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="60" y1="{h - 4}" x2="{w - 10}" y2="{h - 4}" stroke="#444"/>',
             f'<text x="4" y="12" fill="#aaa" font-size="11">{html.escape(_fmt(top, unit))}</text>',
             f'<text x="4" y="{h - 6}" fill="#aaa" font-size="11">'
             f'{html.escape(_fmt(bottom, unit))}</text>']
    for i, (_, pts) in enumerate(series):
        good = [(t, v) for t, v in pts if not math.isnan(v)]
        if good:
            parts.append(f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
                         f'stroke-width="1.6" points="{" ".join(xy(t, v) for t, v in good)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _markdown(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return "".join(f"<p>{p}</p>" for p in out.split("\n\n"))


def render(dashboard: dict, url: str, start: float, end: float, step: float = 1.0,
           variables: dict[str, str] | None = None) -> tuple[str, list[Panel]]:
    """(HTML page, panels drawn) of `dashboard` over [start, end] from Prometheus at `url`."""
    variables = {"$__rate_interval": "5s", "$instance": ".*", "$materialization": ".*",
                 "$link": ".*", **(variables or {})}
    col = WIDTH_PX / COLS
    boxes, drawn = [], []
    bottom_px = 0
    for p in dashboard["panels"]:
        g = p["gridPos"]
        x, y, w, h = g["x"] * col, g["y"] * ROW_PX, g["w"] * col - 8, g["h"] * ROW_PX - 8
        bottom_px = max(bottom_px, y + h + 8)
        title = html.escape(p.get("title", ""))
        style = f"left:{x:.0f}px;top:{y}px;width:{w:.0f}px;height:{h}px"
        if p["type"] == "row":
            boxes.append(f'<div class="row" style="{style}">{title}</div>')
            continue
        panel = Panel(p.get("title", ""), p["type"])
        drawn.append(panel)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "none")
        if p["type"] == "text":
            body = _markdown(p["options"]["content"])
        else:
            for t in p.get("targets", []):
                expr = t["expr"]
                for k, v in variables.items():
                    expr = expr.replace(k, v)
                for r in _query_range(url, expr, start, end, step):
                    pts = [(float(ts), float(v)) for ts, v in r["values"]]
                    panel.series.append((_legend(t.get("legendFormat", ""), r["metric"]), pts))
            if p["type"] == "stat":
                last = (sum(pts[-1][1] for _, pts in panel.series if pts) if panel.series
                        else math.nan)
                body = f'<div class="stat">{html.escape(_fmt(last, unit))}</div>'
            else:
                legend = "".join(
                    f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>'
                    f'{html.escape(name)}</span>' for i, (name, _) in enumerate(panel.series[:8]))
                more = len(panel.series) - 8
                legend += f"<span>+{more} more</span>" if more > 0 else ""
                body = (_svg(panel.series, int(w) - 16, h - 78, unit, start, end) +
                        f'<div class="legend">{legend or "no data"}</div>')
        boxes.append(f'<div class="panel" style="{style}"><h3>{title}</h3>{body}</div>')
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(
        dashboard.get("title", ""))}</title><style>
body{{background:#111217;color:#ccccdc;font-family:Inter,Helvetica,Arial,sans-serif;margin:0}}
header{{padding:10px 16px;font-size:18px;border-bottom:1px solid #2c2d33}}
#grid{{position:relative;margin:8px;height:{bottom_px}px}}
.panel{{position:absolute;background:#181b1f;border:1px solid #2c2d33;border-radius:3px;
overflow:hidden;padding:4px 8px;box-sizing:border-box}}
.panel h3{{font-size:13px;margin:2px 0 6px 0;font-weight:500}}
.row{{position:absolute;font-size:15px;font-weight:600;padding-top:8px}}
.stat{{font-size:34px;color:#73bf69;text-align:center;margin-top:10px}}
.legend{{font-size:11px;margin-top:4px}} .legend span{{margin-right:12px;white-space:nowrap}}
.legend i{{display:inline-block;width:10px;height:3px;margin-right:4px;vertical-align:middle}}
p{{font-size:13px;line-height:1.4}} code{{color:#f2cc0c}}
</style></head><body><header>{html.escape(dashboard.get("title", ""))}
<span style="font-size:12px;color:#888">&nbsp; drawn from Prometheus at {html.escape(url)}
</span></header><div id="grid">{"".join(boxes)}</div></body></html>"""
    return page, drawn
