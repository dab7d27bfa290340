"""The admin dashboard at ``GET /``: what the backend is doing, per connected project.

Server-rendered HTML with inline SVG plots (``svgplot.py``), read from the files the cycles write
(``insight.project_view``, ``progress.read_progress``); no front-end stack, no request to Label
Studio. Per project: the running cycle's stage, counts and ETA (the section refreshes itself every
2 s from ``/dashboard/progress``, which reads only ``insight.progress_view`` and progress.json, and
the page reloads when a cycle ends); the new annotations the scheduler counted (RQ: in Redis); the
history of the cycles still on disk (KEEP_CYCLES, KEEP_FAILED);
plots (learning-curve estimate, score distributions, NC1-NC4 and SELI/ETF distances per epoch,
training accuracy); the next tasks of the queue with thumbnails and their score components; the
label-error flags once a cycle writes them.

Everything from outside (labels, task data, error messages) goes through ``html.escape``.
Thumbnails come only from the image cache (``MODEL_DIR/cache``), only for tasks the latest cycle
lists as next, re-encoded as PNG: a request never makes the backend fetch a URL. The routes sit
behind the app's basic auth like every other route (``app.before_request``); without basic auth
they answer only clients on this machine (``Auth.dashboard_ok``), and only requests addressed to it
by a local name or PUBLIC_URL's host (``local_host``: DNS rebinding). Task URLs in failure reasons
are cut to scheme://host/path (``urls.redact_urls``).

The files are read as they are: a damaged one (not JSON, wrong types, non-finite numbers) is drawn
as "–" where a value is wrong (progress.json through ``progress.clean``), a progress.json that
breaks the "Now" block anyway degrades that block only, and a project whose files break its section
anyway is shown as unreadable (the exception goes to the log) while the other projects render.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import time
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from ncalr_backend.service.auth import DASHBOARD_CLOSED
from ncalr_backend.service.insight import (active_projects, progress_view, project_view, scaled_png,
                                           thumbnail_file_for, thumbnail_url_for)
from ncalr_backend.service.progress import STAGE_TITLES, STAGES, TIMING_KEYS, read_progress
from ncalr_backend.service.recovery import MAX_CRASHES
from ncalr_backend.service.store import count_of, finite_num, project_id_from
from ncalr_backend.service.svgplot import PALETTE, empty_plot, fmt, histogram, line_plot, stacked_bar
from ncalr_backend.service.urls import redact_urls

log = logging.getLogger(__name__)

REFRESH_MS = 2000
THUMB = 64
STAGE_COLORS = dict(zip(("wait",) + STAGES, ("#bbbbbb",) + PALETTE))


def e(v) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return escape("" if v is None else str(v), quote=True)


num = finite_num  # the files' numbers may be anything


def obj(v) -> dict:
    return v if isinstance(v, dict) else {}


def when(t) -> str:
    if num(t) is None:
        return "–"
    try:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):  # beyond the years datetime holds
        return "–"


def secs(v) -> str:
    if num(v) is None:
        return "–"
    if v < 60:
        return f"{v:.1f} s"
    return f"{int(v // 60)} min {int(v % 60):02d} s"


def pct(v) -> str:
    return f"{100 * v:.1f}%" if num(v) is not None else "–"


# ---------------------------------------------------------------------------- progress section
def _stage_rows(p: dict, now: float) -> str:
    done = p.get("done") if isinstance(p.get("done"), list) else []
    done = {d["stage"]: d for d in done if isinstance(d, dict) and isinstance(d.get("stage"), str)}
    status = p.get("status")
    cur = p.get("stage") if status == "running" else None
    stopped = stopped_stage(p)
    rows = []
    for s in STAGES:
        d = done.get(s)
        if s == cur:
            k, n, unit = num(p.get("k")) or 0, num(p.get("n")), p.get("unit") or ""
            frac = (k / n) if n else None
            count = f"{k}/{n} {unit}" if n is not None else (f"{k} {unit}" if k else "")
            bar = (f'<progress max="{e(n)}" value="{e(k)}"></progress>' if n and n > 0 else '<progress></progress>')
            extra = obj(p.get("extra"))
            detail = _train_detail(extra, k, n) if s == "train" else ""
            if s == "write_back" and extra.get("created") is not None:
                detail = f'{extra["created"]} created so far'
            rows.append(f'<tr class="stage current" data-stage="{e(s)}"><td>▶ {e(STAGE_TITLES[s])}</td>'
                        f'<td class="count">{e(count)}</td><td>{bar}</td>'
                        f'<td>{e(secs(now - (num(p.get("stage_started_at")) or now)))}'
                        f'{" · " + e(pct(frac)) if frac is not None else ""}</td><td>{e(detail)}</td></tr>')
        elif s == stopped:
            # before "done": a record written before the fix lists the stopped stage as done too
            at = obj(p.get("stopped")) if obj(p.get("stopped")).get("stage") == s else {}
            failed = status == "failed"
            rows.append(f'<tr class="stage {"failed" if failed else "interrupted"}" data-stage="{e(s)}">'
                        f'<td>{"✗" if failed else "■"} {e(STAGE_TITLES[s])}</td>'
                        f'<td class="count">{e(_count(at))}</td><td></td>'
                        f'<td>{e(secs(at.get("seconds")) if at else "")}</td>'
                        f'<td>{"failed here" if failed else "stopped here"}</td></tr>')
        elif d:
            count = _count(d)
            detail = _train_detail(obj(d.get("extra")), d.get("k"), d.get("n"), final=True) if s == "train" else ""
            rows.append(f'<tr class="stage done" data-stage="{e(s)}"><td>✓ {e(STAGE_TITLES[s])}</td>'
                        f'<td class="count">{e(count)}</td><td></td><td>{e(secs(d.get("seconds")))}</td>'
                        f'<td>{e(detail)}</td></tr>')
        else:
            rows.append(f'<tr class="stage pending" data-stage="{e(s)}">'
                        f'<td>· {e(STAGE_TITLES[s])}</td><td></td><td></td><td></td><td></td></tr>')
    return '<table class="stages">' + "".join(rows) + "</table>"


def _count(d: dict) -> str:
    """"k/n unit" (or "k unit") of a stage record."""
    if d.get("n") is not None:
        return f"{d.get('k')}/{d['n']} {d.get('unit') or ''}"
    return f"{d['k']} {d.get('unit') or ''}" if d.get("k") else ""


def stopped_stage(p: dict) -> Optional[str]:
    """The stage a failed or interrupted cycle stopped in (None when unknown): ``stopped_stage``, or
    ``failed_stage`` (records written before it), or an interrupted record's ``stage`` (a process
    that died leaves the stage it was in)."""
    status = p.get("status")
    if status not in ("failed", "interrupted"):
        return None
    for key in ("stopped_stage", "failed_stage") + (("stage",) if status == "interrupted" else ()):
        v = p.get(key)
        if isinstance(v, str) and v in STAGES:
            return v
    return None


def _rerun_text(p: dict, state: dict, sched: Optional[dict]) -> str:
    """What happens to an interrupted cycle now (found by review: "it is run again on restart" was
    wrong with Redis, where a web process's reaper requests it again, and after a crash loop, where
    nothing does)."""
    ip, mode = obj(state.get("in_progress")), obj(sched).get("mode")
    crashes = num(state.get("crashed_cycles")) or 0
    if state.get("pending"):
        return "it is waiting to run again"
    if ip:  # still marked in progress: recovery runs it again
        if mode == "rq":
            return ("a web process's reaper requests it again once its worker's lock has lapsed (RQ_LOCK_TTL), "
                    "and a worker runs it")
        if mode == "embedded":
            return "the backend runs it again when it next starts"
        return ("it runs again at the backend's next start (with Redis: once a web process's reaper finds its "
                "worker gone)")
    if crashes >= MAX_CRASHES:
        return (f"the last {int(crashes)} cycles each ended with their process (out of memory?), so it is not "
                "run again automatically: the next trigger or Start training runs a cycle")
    return "it is not waiting to run again: the next trigger or Start training runs a cycle"


def _train_detail(x: dict, k, n, final: bool = False) -> str:
    parts = []
    if num(x.get("train_acc")) is not None:
        parts.append(f"train acc {x['train_acc']:.3f}")
    if x.get("t_i") is not None and x.get("tpt_by") == "cap":
        parts.append(f"terminal phase not reached: annealing since epoch {x['t_i']} before the cap "
                     f"(window {x.get('window')})")
    elif x.get("t_i") is not None:
        parts.append(f"terminal phase since epoch {x['t_i']} (window {x.get('window')})")
    elif "t_i" in x:
        thr = num(x.get("threshold"))
        parts.append("terminal phase not reached" if final else
                     f"before the terminal phase (needs train acc ≥ {thr:.2f})" if thr is not None
                     else "before the terminal phase")
    return " · ".join(parts)


def new_annotations(state: dict, sched: Optional[dict]):
    """The annotations counted since the last trigger: the scheduler's count when it keeps one
    (RQ counts in Redis, not in ``state.json``; found by review: the page said 0), else the state's."""
    n = obj(sched).get("new_annotations")
    return n if num(n) is not None else (state.get("new_annotations") or 0)


def progress_section(pid: int, p: Optional[dict], state: dict, sched: Optional[dict], now: float,
                     unreadable: bool = False) -> str:
    """The self-refreshing part: the running (or last) cycle's stages, counts and ETA.
    ``unreadable``: progress.json could not be read (this part says so, the rest still shows)."""
    status = (p or {}).get("status") or ("unreadable" if unreadable else "none")
    last_completed = state.get("last_completed") or 0
    attrs = (f'id="progress-{pid}" class="progress status-{e(status)}" data-project="{pid}" '
             f'data-status="{e(status)}" data-cycle="{e((p or {}).get("cycle"))}" '
             f'data-last-completed="{e(last_completed)}" data-stage="{e((p or {}).get("stage") or "")}"')
    waiting = bool((sched or {}).get("waiting")) or bool(state.get("pending"))
    lines = []
    if status == "running":
        eta = num(p.get("eta_s"))
        eta_txt = (f"ETA {secs(eta)}" if eta is not None else
                   (f"this stage about {secs(p['stage_eta_s'])} more; total ETA known after the first cycle"
                    if num(p.get("stage_eta_s")) is not None else "ETA unknown until a cycle has completed"))
        lines.append(f'<p class="headline"><b>Cycle {e(p.get("cycle"))} running</b>: '
                     f'<span class="stage-name">{e(STAGE_TITLES.get(p.get("stage"), p.get("stage")))}</span> · '
                     f'{e(secs(p.get("elapsed_s")))} elapsed · <span class="eta">{e(eta_txt)}</span></p>')
    elif status == "failed":
        lines.append(f'<p class="headline failed"><b>Cycle {e(p.get("cycle"))} failed</b> in '
                     f'{e(STAGE_TITLES.get(stopped_stage(p)) or "its start (reading the project)")} at '
                     f'{e(when(p.get("finished_at")))} UTC: <span class="error">{e(redact_urls(p.get("error")))}'
                     f'</span></p>')
    elif status == "completed":
        took = (num(p.get("finished_at")) or 0) - (num(p.get("triggered_at")) or 0)
        lines.append(f'<p class="headline"><b>Idle.</b> Cycle {e(p.get("cycle"))} completed at '
                     f'{e(when(p.get("finished_at")))} UTC, {e(secs(took))} from trigger to live.</p>')
    elif status == "interrupted":
        where = STAGE_TITLES.get(stopped_stage(p))
        lines.append(f'<p class="headline failed"><b>Cycle {e(p.get("cycle"))} was interrupted</b> '
                     f'(the backend stopped {"during " + e(where) if where else "before its first stage"}); '
                     f'{e(_rerun_text(p, state, sched))}.</p>')
    elif unreadable:
        lines.append(f'<p class="headline error">{e(PROGRESS_UNREADABLE)}</p>')
    else:
        lines.append('<p class="headline"><b>No cycle yet.</b></p>')
    if waiting:
        pend = obj(state.get("pending"))
        lines.append(f'<p class="waiting">A cycle is waiting: {e(pend.get("reason") or "requested")}.</p>')
        unserved = obj(sched).get("unserved")  # RQ: no worker listens, or the workers are suspended
        if isinstance(unserved, str) and unserved:
            lines.append(f'<p class="waiting error unserved">It cannot start: {e(unserved)}.</p>')
    lines.append(f'<p class="counter">{e(new_annotations(state, sched))} new annotations since the last '
                 f'trigger{" · threshold " + e(state.get("threshold")) if state.get("threshold") else ""}.</p>')
    if p:
        lines.append(_stage_rows(p, now))
        accs = obj(p.get("extra")).get("train_accs") if status == "running" else None
        if isinstance(accs, list) and accs:
            lines.append(line_plot([("train acc", list(range(1, len(accs) + 1)), accs)],
                                   "training accuracy, this cycle", "epoch", "", width=300, height=150,
                                   y_range=(0, 1.02), integer_x=True, cls="live-train"))
    return f"<div {attrs}>" + "".join(lines) + "</div>"


# ---------------------------------------------------------------------------- history
def _split(rep: dict):
    t = obj(rep.get("timings"))
    segs = []
    started, triggered = num(rep.get("started_at")), num(rep.get("triggered_at"))
    wait = (started or 0) - (triggered or 0)
    if started and triggered and wait > 0:
        segs.append(("queue wait", wait, STAGE_COLORS["wait"]))
    for s, k in TIMING_KEYS.items():
        if num(t.get(k)) is not None:
            segs.append((STAGE_TITLES[s], float(t[k]), STAGE_COLORS[s]))
    return segs


def history_table(rows: list) -> str:
    if not rows:
        return '<p class="muted">No cycle has run yet.</p>'
    legend = "".join(f'<span class="key"><i style="background:{c}"></i>{e(n)}</span>'
                     for n, c in [("queue wait", STAGE_COLORS["wait"])]
                     + [(STAGE_TITLES[s], STAGE_COLORS[s]) for s in TIMING_KEYS])
    head = ("<tr><th>cycle</th><th>finished (UTC)</th><th>reason</th><th>labels seen</th><th>pool</th>"
            "<th>trigger → live</th><th>split by stage</th><th>terminal phase</th>"
            "<th>accuracy on next labels (estimate)</th><th>status</th></tr>")
    body = []
    for r in reversed(rows):
        tpt = obj(obj(r.get("engine")).get("tpt"))
        if tpt:
            tpt_txt = (f"reached at epoch {tpt.get('t_i')} by {tpt.get('by')}" if tpt.get("reached")
                       else f"not reached ({tpt.get('epochs')} epochs, train acc {fmt(tpt.get('final_train_acc'))}"
                            # annealed, the last epochs may pass the threshold: the window started by the cap
                            + (f"; annealed from epoch {tpt.get('t_i')})" if tpt.get("by") == "cap"
                               else f" < {fmt(tpt.get('threshold'))})"))
        else:
            tpt_txt = "–"
        est = obj(r.get("next_labels_accuracy"))
        est_txt = (f"{pct(est.get('accuracy'))} of {est.get('n')}" if est.get("n") else
                   ("no new labels" if est else "–"))
        ci = est.get("ci95")
        if isinstance(ci, list) and len(ci) == 2 and est.get("n"):
            est_txt += f" (95% CI {pct(ci[0])}–{pct(ci[1])})"
        t = obj(r.get("timings"))
        total = num(t.get("trigger_to_live_s"))
        ok = r.get("status") == "completed"
        status = "completed" if ok else f"{r.get('status')}: {redact_urls(str(r.get('error') or ''))}"
        short = status if len(status) <= 160 else status[:157] + "..."
        body.append(
            f'<tr class="cycle {"ok" if ok else "failed"}" data-cycle="{e(r.get("cycle"))}">'
            f'<td>{e(r.get("cycle"))}</td><td class="when">{e(when(r.get("finished_at")))}</td>'
            f'<td>{e(r.get("reason"))}</td>'
            f'<td>{e(r.get("num_labeled"))}</td><td>{e(r.get("num_pool"))}</td><td>{e(secs(total))}</td>'
            f'<td>{stacked_bar(_split(r), total) if total else ""}</td><td>{e(tpt_txt)}</td><td>{e(est_txt)}</td>'
            f'<td class="status" title="{e(status)}">{e(short)}</td></tr>')
    return (f'<div class="legend">{legend}</div><table class="history">{head}' + "".join(body) + "</table>")


# ---------------------------------------------------------------------------- plots
def _ci(a: dict) -> list:
    ci = a.get("ci95")
    return ci if isinstance(ci, list) and len(ci) == 2 else [None, None]


def learning_curve(rows: list) -> str:
    # only the points that are drawn, so that each tooltip and error bar stays with its point
    pts = [(r.get("num_labeled"), r["next_labels_accuracy"]) for r in rows
           if r.get("status") == "completed" and obj(r.get("next_labels_accuracy")).get("n")
           and num(r.get("num_labeled")) is not None and num(r["next_labels_accuracy"].get("accuracy")) is not None]
    xs = [x for x, _ in pts]
    ys = [a.get("accuracy") for _, a in pts]
    tips = [[f"cycle {a.get('cycle')}: {a.get('correct')}/{a.get('n')} = {pct(a.get('accuracy'))} "
             f"(95% CI {pct(_ci(a)[0])}–{pct(_ci(a)[1])})" for _, a in pts]]
    return line_plot([("accuracy (estimate)", xs, ys)], "Learning curve (estimate)", "labels seen by the cycle",
                     "accuracy", y_range=(0, 1.02), cls="learning-curve", tooltips=tips,
                     bands=[(xs, [_ci(a)[0] for _, a in pts], [_ci(a)[1] for _, a in pts])])


FF_TITLES = {"flips": "FF: prediction flips (pool)",
             "flips+margin": "FF: flips + mean closeness, 1 − margin (pool)",
             "margin": "FF: mean closeness, 1 − margin (pool)"}


FF_NOTES = {"flips": "prediction flips across terminal-phase checkpoints",
            "flips+margin": "prediction flips across terminal-phase checkpoints plus the mean closeness of the top "
                            "two classes, 1 − margin, over them (NCALR_FF_MODE flips+margin)",
            "margin": "the mean closeness of the top two classes, 1 − margin, across terminal-phase checkpoints "
                      "(NCALR_FF_MODE margin)"}


def ff_note(dash: Optional[dict]) -> str:
    """What FF is, for the cycle's ``ff_mode`` (found by review: "prediction flips" in every mode)."""
    mode = obj(dash).get("ff_mode")
    return FF_NOTES.get(mode, FF_NOTES["flips"]) if isinstance(mode, str) else FF_NOTES["flips"]


def ff_title(dash: Optional[dict]) -> str:
    """The FF plot's title for the cycle's ``ff_mode`` (flips: whole counts; the margin modes add
    or are the mean of 1 - margin over the checkpoints, a fraction)."""
    mode = obj(dash).get("ff_mode")
    if isinstance(mode, str) and mode in FF_TITLES:
        return FF_TITLES[mode]
    return FF_TITLES["flips"] if obj(obj(obj(dash).get("score_hist")).get("ff")).get("integer") else "FF (pool)"


def score_plots(dash: Optional[dict]) -> list:
    hist = obj(obj(dash).get("score_hist"))
    out = []
    for key, title, color in (("cmap", "CMAP (pool, latest cycle)", PALETTE[0]),
                              ("ff", ff_title(dash), PALETTE[1]),
                              ("score", "fused score (pool)", PALETTE[2])):
        h = obj(hist.get(key))
        out.append(histogram(h.get("edges"), h.get("counts"), title, key, cls=f"hist hist-{key}", color=color,
                             integer=bool(h.get("integer"))) if h else
                   empty_plot(title, "no data yet", cls=f"hist hist-{key}"))
    return out


def epoch_plots(metrics: Optional[dict]) -> list:
    hist = obj(metrics).get("history")
    hist = [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []
    tpt = obj(obj(obj(metrics).get("summary")).get("tpt"))
    ep = [h.get("epoch") for h in hist]
    vl = [(tpt["t_i"], "cap window" if tpt.get("by") == "cap" else "T_i")] if tpt.get("t_i") else []
    out = [line_plot([("train acc", ep, [h.get("train_acc") for h in hist])], "Training accuracy per epoch",
                     "epoch", "", y_range=(0, 1.02), vlines=vl, integer_x=True, cls="nc nc-acc",
                     hlines=[(tpt.get("threshold"), "terminal-phase threshold")])]
    for key, title in (("nc1", "NC1: within-class variability"), ("nc2_etf_means", "NC2: class means vs ETF"),
                       ("nc3", "NC3: classifier vs class means"), ("nc4", "NC4: nearest-class-mean mismatch")):
        out.append(line_plot([(key, ep, [h.get(key) for h in hist])], title, "epoch", "", vlines=vl,
                             integer_x=True, cls=f"nc nc-{key.split('_')[0]}"))
    series = [(name, ep, [h.get(k) for h in hist]) for name, k in
              (("SELI means", "seli_dist_means"), ("ETF means", "etf_dist_means"),
               ("SELI weights", "seli_dist_weights"), ("ETF weights", "etf_dist_weights"))]
    out.append(line_plot(series, "Gram distance to SELI / ETF", "epoch", "", vlines=vl, integer_x=True,
                         cls="nc seli-etf", width=420))
    return out


# ---------------------------------------------------------------------------- next tasks, label errors
def next_tasks(pid: int, dash: Optional[dict], limit: int = 12, changed: frozenset = frozenset()) -> str:
    """The latest cycle's queue head; ``changed``: tasks annotated or changed since that cycle read
    the project (webhook hints), shown as done rather than as next."""
    items = obj(dash).get("next_tasks")
    # an entry without a task id has no thumbnail and nothing to serve: left out
    items = [t for t in items if isinstance(t, dict) and isinstance(t.get("task"), int)
             and not isinstance(t.get("task"), bool)][:limit] if isinstance(items, list) else []
    if not items:
        return '<p class="muted">No queue yet.</p>'
    out = []
    for t in items:
        if t.get("relabel") is True:  # a labeled task sent back for another annotation: served first
            out.append(_relabel_item(pid, t))
            continue
        labels = t.get("labels") if isinstance(t.get("labels"), list) else []
        label = ", ".join(map(str, labels)) or t.get("label")
        why = []
        for k, name in (("score", "fused"), ("cmap", "CMAP"), ("ff", "FF")):
            if isinstance(t.get(k), (int, float)):
                zk = "z_cmap_signed" if k == "cmap" else f"z_{k}"
                z = t.get(zk)
                why.append(f"{name} {fmt(t[k])}" + (f" (z {z:+.2f})" if isinstance(z, (int, float)) else ""))
        rank = num(t.get("rank", 0))
        rank = int(rank) if rank is not None else None
        group = num(t.get("diversity_group"))
        if group is not None and group >= 0:  # batch diversity: served round robin over groups
            why.append(f"group {int(group)}")
        done = t.get("task") in changed
        if done:
            why.insert(0, "annotated or changed since this cycle")
        out.append(
            f'<li class="next-task{" done" if done else ""}" data-task="{e(t.get("task"))}">'
            f'<img class="thumb" alt="task {e(t.get("task"))}" width="{THUMB}" height="{THUMB}" '
            f'src="dashboard/thumb/{int(pid)}/{int(t.get("task"))}.png">'
            f'<div><b>#{e(rank + 1 if rank is not None else "?")}</b> task {e(t.get("task"))}<br>'
            f'predicted <span class="label">{e(label)}</span> ({e(pct(t.get("confidence")))})<br>'
            f'<span class="why">{e(" · ".join(why))}</span></div></li>')
    return '<ol class="next-tasks">' + "".join(out) + "</ol>"


def _relabel_item(pid: int, t: dict) -> str:
    """A "Next in the queue" entry for a task sent back for another annotation (``review.queue_first``):
    its given label and the model's suggestion; the annotator is shown neither (an empty pre-annotation)."""
    rank = num(t.get("rank", 0))
    given, sug = t.get("given"), t.get("suggested")
    given = (", ".join(map(str, given)) if isinstance(given, list) else given) or "?"
    sug = (", ".join(map(str, sug)) if isinstance(sug, list) else sug) or "?"
    score = num(t.get("flag_score"))
    return (f'<li class="next-task relabel" data-task="{e(t.get("task"))}">'
            f'<img class="thumb" alt="task {e(t.get("task"))}" width="{THUMB}" height="{THUMB}" '
            f'src="dashboard/thumb/{int(pid)}/{int(t.get("task"))}.png">'
            f'<div><b>#{e(int(rank) + 1 if rank is not None else "?")}</b> task {e(t.get("task"))}<br>'
            f'<span class="label">again, for a second opinion</span><br>'
            f'<span class="why">labeled {e(given)}; the model suggests {e(sug)}'
            f'{" (suspicion " + e(fmt(score)) + ")" if score is not None else ""}</span></div></li>')


SHOWN_FLAGS = 50


def label_text(v) -> str:
    """A label as text: a multi-label set joined with ", " (found by review: a Python list's repr),
    an empty set as "(none)"."""
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "(none)"
    return "" if v is None else str(v)


def label_error_table(le) -> str:
    """The cycle's flags (``insight.label_errors``: ``{"flags", "flagged"}``; a bare list is read
    as the flags)."""
    if isinstance(le, list):
        le = {"flags": le, "flagged": len(le)}
    if not isinstance(le, dict) or not isinstance(le.get("flags"), list):
        return '<p class="muted">No label-error flags from this cycle.</p>'
    flags = [f for f in le["flags"] if isinstance(f, dict)][:SHOWN_FLAGS]
    if not flags:
        return '<p class="muted">The latest cycle flagged no label.</p>'
    total = le.get("flagged") if num(le.get("flagged")) is not None else len(flags)
    rows = []
    for f in flags:
        sug = f.get("suggested") if "suggested" in f else f.get("predicted")
        label = label_text(f.get("label"))
        if isinstance(f.get("label"), (list, tuple)) and f.get("suspect") is not None:
            label += f" (suspect: {f['suspect']})"
        score = f.get("score")
        rows.append(f'<tr><td>{e(f.get("task"))}</td><td class="label">{e(label)}</td>'
                    f'<td class="label">{e(label_text(sug))}</td>'
                    f'<td>{e(fmt(score) if num(score) is not None else score)}</td></tr>')
    more = (f'<p class="note">The {len(flags)} most suspect of {e(total)} flagged.</p>'
            if total > len(flags) else "")
    return (more + '<table class="label-errors"><tr><th>task</th><th>label</th><th>suggested</th><th>score</th>'
            '</tr>' + "".join(rows) + "</table>")


def label_error_heading(view: dict) -> str:
    cycle = obj(view.get("latest")).get("cycle")
    return (f'<h3>Label-error flags of cycle {e(cycle)}</h3>' if cycle is not None else '<h3>Label-error flags</h3>') \
        + ('<p class="note">What this cycle flagged, most suspect first, including tasks reviewers have since '
           'taken off the list (corrected or confirmed); Label Studio\'s "Suspected label errors" tab shows only '
           'those still listed.</p>')


def kept_note(keep: Optional[tuple] = None) -> str:
    """Says that only the cycles still on disk are shown (found by review: older ones vanished
    from the table and the plots without a word)."""
    kc, kf = keep if keep else ("KEEP_CYCLES", "KEEP_FAILED")
    note = (f"The last {kc} completed and {kf} failed cycles are kept{' (KEEP_CYCLES, KEEP_FAILED)' if keep else ''}"
            ": older ones are pruned from the disk, and from this table and the learning curve.")
    return f'<p class="note kept">{e(note)}</p>'


# ---------------------------------------------------------------------------- page
CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#243447;color:#fff;padding:10px 18px}header h1{font-size:18px;margin:0;display:inline}
header span{margin-left:14px;opacity:.8;font-size:13px}
section.project{background:#fff;margin:14px;padding:10px 18px 18px;border-radius:6px;box-shadow:0 1px 3px #0002}
h2{font-size:17px;margin:8px 0}h3{font-size:14px;margin:18px 0 6px;color:#345}
.muted{color:#888}.headline{font-size:14px}.counter,.waiting{font-size:13px}
td.when{white-space:nowrap}.failed,.error{color:#b00020}
table{border-collapse:collapse;font-size:12px}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;
vertical-align:middle}th{background:#f0f2f5}
table.stages td:first-child{width:110px}table.stages .pending{color:#aaa}table.stages .current{font-weight:600}
progress{width:160px}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plots svg{background:#fff;border:1px solid #e4e6ea;border-radius:4px}
.note{font-size:12px;color:#555;max-width:900px}
ol.next-tasks{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0}li.next-task.done{opacity:.45}
li.next-task{display:flex;gap:6px;align-items:center;border:1px solid #e4e6ea;border-radius:4px;padding:4px;
font-size:12px;width:260px}img.thumb{image-rendering:pixelated;background:#000;border-radius:3px}
.why{color:#555}.legend{font-size:11px;margin:4px 0}.key{margin-right:10px}
.key i{display:inline-block;width:10px;height:10px;margin-right:3px;vertical-align:middle}
"""

SCRIPT = """
(function(){
  function refresh(el){
    var pid = el.getAttribute('data-project');
    fetch('dashboard/progress?project=' + encodeURIComponent(pid), {credentials: 'same-origin'})
      .then(function(r){ return r.ok ? r.text() : null; })
      .then(function(html){
        if (html === null) return;
        var box = document.createElement('div'); box.innerHTML = html;
        var fresh = box.firstElementChild; if (!fresh) return;
        var ended = fresh.hasAttribute('data-project') && (
          el.getAttribute('data-last-completed') !== fresh.getAttribute('data-last-completed')
          || (el.getAttribute('data-status') === 'running' && fresh.getAttribute('data-status') !== 'running'));
        el.replaceWith(fresh);
        if (ended) { location.reload(); }
      }).catch(function(){});
  }
  setInterval(function(){
    document.querySelectorAll('div.progress[data-project]').forEach(refresh);
  }, %d);
})();
""" % REFRESH_MS

# The page's one script, allowed by its hash (no 'unsafe-inline' for scripts): the hash of exactly
# the bytes between <script> and </script> as served (UTF-8).
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
CSP = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
       f"script-src '{SCRIPT_HASH}'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
UNREADABLE = "this project's files cannot be read (see the log)"
PROGRESS_UNREADABLE = "the cycle's progress (progress.json) cannot be read (see the log)"


def unreadable_section(pid) -> str:
    return (f'<section class="project unreadable" id="project-{e(pid)}" data-project="{e(pid)}">'
            f'<h2>Project {e(pid)}</h2><p class="error">{e(UNREADABLE)}</p></section>')


def now_block(pid: int, p: Optional[dict], state: dict, sched: Optional[dict], now: float,
              unreadable: bool = False) -> str:
    """``progress_section``, or, when the progress record breaks it, the section without it (logged):
    a damaged progress.json degrades the "Now" block only (found by review: it blanked the project)."""
    try:
        return progress_section(pid, p, state, sched, now, unreadable)
    except Exception:  # noqa: BLE001 - whatever a damaged progress.json holds
        log.exception("dashboard: project %s: its progress cannot be drawn", pid)
        return progress_section(pid, None, state, sched, now, unreadable=True)


def head_note(state: dict, live_version) -> str:
    """What the last refill of the live version's written head found (``placement.refill_head``,
    run after a failed cycle): a line once it topped the head up, an error once nothing is left."""
    h = state.get("head")
    if not isinstance(h, dict) or not live_version or h.get("version") != live_version:
        return ""
    n = {k: count_of(h.get(k)) for k in ("written", "unlabeled", "size", "refilled")}
    if n["unlabeled"] == 0:
        return ('<p class="error head">The live order is used up: every task of it written to Label Studio is '
                'labeled or skipped, so "Label All Tasks" serves at random, without pre-annotations, until a '
                'cycle goes live (see the last error).</p>')
    if not n["refilled"]:
        return ""
    return (f'<p class="muted head">After a failed cycle the queue was topped up: {e(n["refilled"])} more ranked '
            f'tasks written to Label Studio (ranks below {e(n["written"])}); {e(n["unlabeled"])} of the '
            f'{e(n["size"])} the head should hold are unlabeled (not skipped either).</p>')


def project_section(view: dict, p: Optional[dict], sched: Optional[dict], now: float, threshold=None,
                    keep: Optional[tuple] = None, progress_unreadable: bool = False) -> str:
    pid = view["project"]
    latest = view.get("latest") or {}
    rep = latest.get("report") or {}
    labels = latest.get("labels") if isinstance(latest.get("labels"), list) else []
    state = dict(view.get("state") or {})
    if threshold:
        state["threshold"] = threshold
    # the version Label Studio serves: the latest cycle's, unless that one had nothing to rank
    live = view["live_version"] if "live_version" in view else latest.get("model_version")
    sub = (f'{e(rep.get("num_tasks"))} tasks · {e(rep.get("num_labeled"))} labeled · live version '
           + (f'<code>{e(live)}</code>' if live else "none yet")
           + ("" if live == latest.get("model_version") else
              f' (the latest cycle, <code>{e(latest.get("model_version"))}</code>, had nothing to rank)')
           if latest else "no completed cycle yet")
    plots = [learning_curve(view.get("history") or [])] + score_plots(view.get("dashboard")) \
        + epoch_plots(view.get("metrics"))
    est_note = ('The learning curve is an <b>estimate</b>: for each cycle, the accuracy of its predictions '
                'on the tasks of its pool that were labeled after it (the next cycle computes it; '
                'those labels were never trained on). They are the tasks the queue served first, the '
                'ones NCAL-R found most informative, so the figure tends to under-state the accuracy on '
                'a random task. Bars: Wilson 95% interval. NC and SELI/ETF plots: the latest completed '
                'cycle, per epoch (T_i: start of the terminal phase).')
    return (f'<section class="project" id="project-{pid}" data-project="{pid}">'
            f'<h2>Project {pid} <small class="muted">{sub}</small></h2>'
            + (f'<p class="muted">labels: {e(", ".join(map(str, labels)))}</p>' if labels else "")
            + (f'<p class="error drift">{e(state["serving_drift"])}</p>'
               if isinstance(state.get("serving_drift"), str) else "")
            + head_note(state, live if latest else None)
            + f'<h3>Now</h3>{now_block(pid, p, state, sched, now, progress_unreadable)}'
            f'<h3>Cycles</h3>{kept_note(keep) if view.get("history") else ""}{history_table(view.get("history") or [])}'
            f'<h3>Plots</h3><p class="note">{est_note}</p><div class="plots">{"".join(plots)}</div>'
            f'<h3>Next in the queue</h3><p class="note">What "Label All Tasks" serves next, as the latest cycle '
            f'ranked it (tasks annotated since are greyed out), and why: the fused '
            f'NCAL-R score (z-scored CMAP and FF; higher = served first), CMAP (how much labeling the task '
            f'would move the class means), FF ({ff_note(view.get("dashboard"))}).</p>'
            f'{next_tasks(pid, view.get("dashboard"), changed=frozenset(view.get("changed_since") or ()))}'
            f'{label_error_heading(view)}{label_error_table(view.get("label_errors"))}</section>')


def _section_or_unreadable(view: dict, p: Optional[dict], sched: Optional[dict], now: float, threshold=None,
                           keep: Optional[tuple] = None) -> str:
    """The project's section, or the "cannot be read" one (logged) when its files break it: one
    damaged project never takes the page down for the others. ``p`` UNREADABLE_PROGRESS: its
    progress.json could not be read (only the "Now" block says so)."""
    pid = view.get("project")
    if view.get("unreadable"):
        return unreadable_section(pid)
    try:
        if p is UNREADABLE_PROGRESS:
            return project_section(view, None, sched, now, threshold, keep, progress_unreadable=True)
        return project_section(view, p, sched, now, threshold, keep)
    except Exception:  # noqa: BLE001 - whatever a damaged file holds
        log.exception("dashboard: project %s: its files cannot be read", pid)
        return unreadable_section(pid)


UNREADABLE_PROGRESS = object()  # a progress value: the project's progress.json could not be read


def render_page(views: list, progress: dict, scheds: dict, now: float, mode: str = "embedded",
                thresholds: Optional[dict] = None, idle: Optional[list] = None, keep: Optional[tuple] = None,
                unserved: Optional[str] = None) -> str:
    """The page. A view ``{"project": id, "unreadable": True}`` (its files could not be read) is
    shown as such; ``keep``: (KEEP_CYCLES, KEEP_FAILED); ``unserved``: why RQ jobs do not run now
    (``RQScheduler.unserved_reason``: no worker, or suspended), shown above every project."""
    sections = "".join(_section_or_unreadable(v, progress.get(v["project"]), scheds.get(v["project"]), now,
                                              (thresholds or {}).get(v["project"]), keep) for v in views)
    if not views:
        sections = ('<section class="project"><p>No project has run a cycle yet. Connect the backend to a Label '
                    'Studio project and label a few tasks (or press Start training).</p></section>')
    nav = " · ".join(f'<a href="#project-{v["project"]}">project {v["project"]}</a>' for v in views)
    more = (f'<p class="muted" style="margin:14px">Projects without a cycle: {e(", ".join(map(str, idle)))}</p>'
            if idle else "")
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>ncalr-backend dashboard</title><style>{CSS}</style></head><body>'
            f'<header><h1>ncalr-backend</h1><span>NCAL-R active learning · scheduler: {e(mode)} · '
            f'rendered {e(when(now))} UTC</span> <span>{nav}</span></header>'
            + (f'<p class="error unserved" style="margin:14px"><b>Cycles do not run:</b> {e(unserved)}.</p>'
               if unserved else "")
            + f'{sections}{more}<script>{SCRIPT}</script></body></html>')


# ---------------------------------------------------------------------------- Flask
HOST_REFUSED = ("this request was addressed to {host}, not to this machine: while basic auth is off the dashboard and /status "
                "answers only requests for localhost, 127.0.0.1 or [::1] (any port), or for PUBLIC_URL's host "
                "(a page of another site can point its own name at 127.0.0.1: DNS rebinding). Open it as "
                "http://localhost:<port>/, set PUBLIC_URL to the address you use, or set BASIC_AUTH_USER and "
                "BASIC_AUTH_PASS")


def host_name(host: Optional[str]) -> str:
    """The name of a Host header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``), lower case,
    without a trailing dot."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def local_host(host: Optional[str], public_host: Optional[str] = None) -> bool:
    """A request's Host names this machine: localhost, 127.0.0.0/8, ::1 (any port), or
    ``public_host`` (PUBLIC_URL's)."""
    name = host_name(host)
    if not name:
        return False
    if name == "localhost" or (public_host and name == public_host):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def thumbnail_png(data: bytes, size: int = THUMB) -> bytes:
    """Cached image bytes -> a PNG thumbnail (never the original bytes, whatever they are)."""
    from ncalr_backend.data.images import displayed
    # as annotators see it (the model gets the same, at IMAGE_CHANNELS); a decompression bomb is
    # refused before it is decoded, and the decoding shares the workers' pixel budget
    with displayed(data, size, "RGB") as img:
        return scaled_png(img, size)


def register(app, backend) -> None:
    """Add the dashboard's routes; ``/`` (label-studio-ml's second URL of its health view) becomes
    the page, ``/health`` stays JSON (Label Studio's health check)."""
    from flask import Response, abort, jsonify, request

    from ncalr_backend.data.images import ImageCache
    settings = backend.settings
    model_dir = Path(settings.model_dir)

    def _known(pid: int) -> bool:
        try:
            return (model_dir / "projects" / str(pid)).is_dir()
        except OSError:  # a name the file system refuses (too long): no such project
            return False

    def _sched(pid):
        try:
            return backend.scheduler().status(pid)
        except Exception:  # the page must render without Redis
            return None

    def _unserved():
        """RQ mode: why queued jobs do not run now (no worker, workers suspended), else None; the
        page renders without Redis (the projects' blocks say what they can)."""
        if not settings.redis_url:
            return None
        try:
            unserved_reason = getattr(backend.scheduler(), "unserved_reason", None)
            return unserved_reason() if unserved_reason else None
        except Exception:  # noqa: BLE001
            return None

    def _threshold(view):
        n = ((view.get("state") or {}).get("num_tasks") or view.get("num_tasks")
             or ((view.get("latest") or {}).get("report") or {}).get("num_tasks"))
        return settings.trigger_threshold(int(n)) if isinstance(n, int) and not isinstance(n, bool) else None

    def _html(body: str) -> Response:
        resp = Response(body, mimetype="text/html")
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Content-Security-Policy"] = CSP
        return resp

    def _progress(pid: int, now: float):
        """The project's progress record, or UNREADABLE_PROGRESS (logged): read on its own, so that
        a damaged progress.json degrades the "Now" block only."""
        try:
            return read_progress(model_dir, pid, now)
        except Exception:  # noqa: BLE001
            log.exception("dashboard: project %s: its progress.json cannot be read", pid)
            return UNREADABLE_PROGRESS

    def _read(pid: int, now: float):
        """(view, progress, threshold) of one project; the view says "unreadable" when its files
        cannot be read (logged)."""
        try:
            view = project_view(model_dir, pid)
            threshold = _threshold(view)
        except Exception:  # noqa: BLE001 - one project's damaged files must not take the page down
            log.exception("dashboard: project %s: its files cannot be read", pid)
            return {"project": pid, "unreadable": True}, None, None
        return view, _progress(pid, now), threshold

    public_host = host_name(urlsplit(settings.public_url).netloc) if settings.public_url else None
    public_host = public_host or None

    def _closed(msg: str):
        if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":  # a browser
            return Response(msg + "\n", status=403, mimetype="text/plain")
        return jsonify({"error": msg}), 403

    def guard():
        """Without basic auth the dashboard answers only this machine (auth.py ``dashboard_ok``),
        and only requests addressed to it by a local name (``local_host``: a page of another site
        whose name an attacker points at 127.0.0.1, DNS rebinding, sends its own name as Host);
        with basic auth, ``check_auth`` (registered before) has already asked for the credentials.
        ``/status`` shows the same (labels, suspected label errors, file names): the same rule
        (found by review: it answered any machine)."""
        if not (request.path in ("/", "/status") or request.path.startswith("/dashboard/")):
            return None
        if not backend.auth.dashboard_ok(request.remote_addr):
            return _closed(DASHBOARD_CLOSED)
        if settings.basic_auth_user or local_host(request.host, public_host):
            return None
        return _closed(HOST_REFUSED.format(host=host_name(request.host) or "(none)"))

    def page():
        now = time.time()
        from ncalr_backend.service.store import list_projects
        scheds = {}

        def sched(pid):
            if pid not in scheds:
                scheds[pid] = _sched(pid)
            return scheds[pid]

        # a project counts when the scheduler counted annotations for it (RQ: in Redis only)
        pids = active_projects(model_dir, counted=lambda pid: num(obj(sched(pid)).get("new_annotations")))
        read = {pid: _read(pid, now) for pid in pids}
        views = [read[pid][0] for pid in pids]
        idle = [pid for pid in list_projects(model_dir) if pid not in pids]
        html = render_page(views, {pid: read[pid][1] for pid in pids}, {pid: sched(pid) for pid in pids}, now,
                           "rq" if settings.redis_url else "embedded", {pid: read[pid][2] for pid in pids}, idle,
                           (settings.keep_cycles, settings.keep_failed), _unserved())
        return _html(html)

    def progress_fragment():
        pid = project_id_from(request.args.get("project", ""))
        if pid is None:
            abort(400, "'project' must be a project id")
        if not _known(pid):
            abort(404, "no such project")
        now = time.time()
        try:  # what this part shows only (state, progress, the task count), not the whole project_view
            view = progress_view(model_dir, pid)
            state = dict(view["state"])
            thr = _threshold(view)
            if thr:
                state["threshold"] = thr
            p = _progress(pid, now)
            unreadable = p is UNREADABLE_PROGRESS
            html = now_block(pid, None if unreadable else p, state, _sched(pid), now, unreadable)
        except Exception:  # noqa: BLE001 - damaged files: say so (no data-project: the page stops refreshing it)
            log.exception("dashboard: project %s: its files cannot be read", pid)
            html = (f'<div class="progress unreadable" data-status="unreadable"><p class="error">{e(UNREADABLE)}</p>'
                    '</div>')
        return _html(html)

    def thumb(project_id: int, task_id: int):
        if project_id_from(project_id) is None or not _known(project_id):
            abort(404, "no such project")
        url = thumbnail_url_for(model_dir, project_id, task_id)  # None unless the latest cycle lists the task
        if not url:
            abort(404, "no thumbnail for this task")
        path = ImageCache(model_dir / "cache").path_for(url)
        if not path.is_file():  # not cached (a Local Files direct read, or pruned): the cycle's own view
            path = thumbnail_file_for(model_dir, project_id, task_id)
            if path is None:
                abort(404, "image not in the cache")
        try:
            png = thumbnail_png(path.read_bytes())
        except Exception:
            abort(404, "cached image cannot be read")
        resp = Response(png, mimetype="image/png")
        resp.headers["Cache-Control"] = "private, max-age=300"
        return resp

    app.before_request(guard)
    health = app.view_functions["health"]
    app.view_functions["health"] = lambda: page() if request.path == "/" else health()
    app.add_url_rule("/dashboard/progress", "dashboard_progress", progress_fragment, methods=["GET"])
    app.add_url_rule("/dashboard/thumb/<int:project_id>/<int:task_id>.png", "dashboard_thumb", thumb,
                     methods=["GET"])
