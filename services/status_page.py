"""The service's status page, GET /status (HTML) and GET /status/json: what an annotator needs to
follow the loop without a terminal.

- the versions in the registry with their test scores, training rule, the human labels behind
  them, and annotator agreement (how often annotators kept that version's suggestion);
- the loop's turns: trigger, stage and progress while running, outcome and reason when done;
- the label-efficiency curve: test macro-F1 of each version against the human labels it saw.

Read-only and free of texts and secrets (scores, counts and reasons only), so it is served
without authentication, like /metadata; see docs/serving.md. It refreshes itself while a turn runs.
"""

from __future__ import annotations

import html
import time
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from labelloop.settings import Settings


def collect(settings: Settings, serving_version: str | None = None) -> dict[str, Any]:
    """Everything the page shows, as plain data."""
    from labelloop import loop_status, registry
    from labelloop.labels_store import open_store

    champion = registry.get_champion(settings)
    agreement: dict[str, dict[str, Any]] = {}
    labels_at: list[int] = []
    with open_store(settings) as store:
        rows = store.rows(status="active")
    if not rows.empty:
        shown = rows[rows["shown_label"].notna() & rows["model_version"].notna()]
        for version, group in shown.groupby("model_version"):
            kept = int((group["label"] == group["shown_label"]).sum())
            agreement[str(version)] = {"annotations": int(len(group)), "kept": kept,
                                       "agreement": kept / len(group)}
        labels_at = sorted(int(s) for s in rows["seq"])
    quality: dict[str, dict[str, Any]] = {}
    if settings.task.type == "generation":
        from annotation.agreement import generation_signals

        quality = generation_signals(rows)  # the live signals, instead of label agreement
        agreement = {}
    versions = []
    for mv in registry.list_versions(settings):
        tags = mv.tags
        seq = int(tags.get("labelloop.labels_seq", 0) or 0)
        human = sum(1 for s in labels_at if s <= seq) if seq else 0

        def num(key: str) -> float | None:
            try:
                return float(tags[key])
            except (KeyError, ValueError):
                return None

        versions.append({
            "version": str(mv.version), "status": tags.get(registry.STATUS_TAG, "?"),
            "champion": champion is not None and str(champion.version) == str(mv.version),
            "rule": tags.get("labelloop.train_rule", "full"),
            "test_macro_f1": num("test_macro_f1"), "test_accuracy": num("test_accuracy"),
            "human_labels": human, "created": mv.creation_timestamp / 1000.0,
            "agreement": agreement.get(str(mv.version)),
            "quality": quality.get(str(mv.version)),
        })
    return {"model_name": settings.registry.model_name,
            "champion": str(champion.version) if champion else None,
            "serving": serving_version, "versions": versions,
            "turns": loop_status.turns(settings, limit=20), "generated_at": time.time(),
            "tools": list(settings.annotation.tools)}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _agreement(a: dict[str, Any] | None, q: dict[str, Any] | None = None) -> str:
    if q:  # generation: accepted unedited, edit distance, preference win rate
        bits = []
        if q["accepted_unedited"] is not None:
            bits.append(f"{q['accepted_unedited']:.0%} of {q['responses']} kept unedited, "
                        f"edit distance {q['edit_distance']:.2f}")
        if q["win_rate"] is not None:
            bits.append(f"won {q['win_rate']:.0%} of {q['comparisons']} comparisons")
        return "; ".join(bits) or "-"
    return "-" if not a else f"{a['agreement']:.0%} of {a['annotations']}"


def _when(ts: float | None) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def curve_svg(versions: list[dict[str, Any]], width: int = 520, height: int = 220) -> str:
    """Test macro-F1 per version against the human labels it was trained on (inline SVG)."""
    points = [(v["human_labels"], v["test_macro_f1"], v["version"]) for v in versions
              if v["test_macro_f1"] is not None]
    if not points:
        return "<p>No scored versions yet.</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_max = max(max(xs), 1)
    y_min, y_max = min(ys) - 0.01, max(ys) + 0.01
    pad = 40

    def sx(x: float) -> float:
        return pad + (width - 2 * pad) * x / x_max

    def sy(y: float) -> float:
        return height - pad - (height - 2 * pad) * (y - y_min) / max(y_max - y_min, 1e-9)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in sorted(points))
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4"><title>v{v}: {y:.4f} at '
                   f'{x} human labels</title></circle><text x="{sx(x) + 5:.1f}" '
                   f'y="{sy(y) - 6:.1f}" font-size="11">v{v}</text>' for x, y, v in points)
    return (f'<svg id="curve" width="{width}" height="{height}" role="img" '
            f'aria-label="label-efficiency curve">'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
            f'stroke="#999"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
            f'<text x="{width / 2 - 60}" y="{height - 8}" font-size="12">human labels trained on</text>'
            f'<text x="4" y="{pad - 10}" font-size="12">test macro-F1 ({y_min:.3f}-{y_max:.3f})</text>'
            f'<polyline fill="none" stroke="#2a6" stroke-width="2" points="{path}"/>{dots}</svg>')


def how_to_train(tools: list[str]) -> str:
    """The empty runs table's hint: how a person starts a training run with these tools."""
    button = ('in Label Studio, project Settings, Model, the labelloop card&#39;s "..." menu, '
              "Start Training; or ") if "label-studio" in tools else ""
    return (f"No training run yet: {button}run <code>labelloop feedback --train</code> after a "
            "few " + ("annotations" if button else "answers") + ".")


def render(data: dict[str, Any]) -> str:
    e = html.escape
    running = any(t["state"] == "running" for t in data["turns"])
    rows = []
    for v in reversed(data["versions"]):
        a = v["agreement"]
        rows.append(
            f'<tr class="version{" champion" if v["champion"] else ""}">'
            f'<td>v{e(v["version"])}{" &#9733; champion" if v["champion"] else ""}</td>'
            f'<td>{e(v["status"])}</td><td>{e(v["rule"])}</td>'
            f'<td>{_fmt(v["test_macro_f1"])}</td><td>{_fmt(v["test_accuracy"])}</td>'
            f'<td>{v["human_labels"]}</td>'
            f'<td>{_agreement(a, v.get("quality"))}</td>'
            f'<td>{_when(v["created"])}</td></tr>')
    turns = []
    for t in data["turns"]:
        took = ((t["ended_at"] or time.time()) - t["started_at"])
        progress = (f'<progress value="{t["progress"]:.2f}" max="1"></progress> {t["stage"]}'
                    if t["state"] == "running" else e(t["state"]))
        turns.append(
            f'<tr class="turn {e(t["state"])}" data-turn="{t["id"]}"><td>{t["id"]}</td>'
            f'<td>{e(t["trigger"] or "")}</td><td>{progress}</td>'
            f'<td class="outcome">{e(t["outcome"] or "")}</td><td>{took:.0f} s</td>'
            f'<td class="summary">{e(t["summary"] or "")}</td><td>{_when(t["started_at"])}</td></tr>')
    refresh = '<meta http-equiv="refresh" content="3">' if running else ""
    return f"""<!doctype html><html><head><meta charset="utf-8">{refresh}
<title>labelloop status</title><style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222 }}
table {{ border-collapse: collapse; margin-bottom: 1.5em }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top }}
tr.champion {{ background: #eef8ee; font-weight: 600 }} tr.failed td, tr.interrupted td {{ color: #a22 }}
td.summary {{ max-width: 48em }}
</style></head><body>
<h1>labelloop: {e(data["model_name"])}</h1>
<p id="serving">Serving version <b>{e(str(data["serving"] or "-"))}</b>; champion in the registry:
<b>{e(str(data["champion"] or "none"))}</b>.</p>
<h2>Training runs</h2>
<table id="turns"><tr><th>run</th><th>trigger</th><th>state</th><th>outcome</th><th>took</th>
<th>what happened</th><th>started</th></tr>{"".join(turns) or f'<tr><td colspan="7">{how_to_train(data.get("tools", []))}</td></tr>'}</table>
<h2>Versions</h2>
<table id="versions"><tr><th>version</th><th>status</th><th>trained by</th><th>test macro-F1</th>
<th>test accuracy</th><th>human labels</th><th>annotators kept its suggestion</th><th>registered</th></tr>
{"".join(rows)}</table>
<h2>Label efficiency</h2>{curve_svg(data["versions"])}
<p><small>JSON: <a href="status/json">/status/json</a> - generated {_when(data["generated_at"])}</small></p>
</body></html>"""


def create_app(get_state: Callable[[], Any]) -> FastAPI:
    """`get_state()` returns the running service (its `settings` and `holder`)."""
    app = FastAPI(title="labelloop status", docs_url=None, redoc_url=None, openapi_url=None)

    def _collect() -> dict[str, Any]:
        state = get_state()
        current = getattr(getattr(state, "holder", None), "current", None)
        return collect(state.settings, getattr(current, "version", None))

    @app.get("/")
    async def page():
        return HTMLResponse(render(await run_in_threadpool(_collect)))

    @app.get("/json")
    async def as_json():
        return JSONResponse(await run_in_threadpool(_collect))

    return app
