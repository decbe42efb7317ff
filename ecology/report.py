"""`trapkit report`: the figures ecologists compute first, as CSV tables, PNG plots and one `report.html`.

From a `Survey` (`trapkit.ecology.survey`: a classify output, or a Camtrap DP package):

- Effort and camera health (`effort.csv`, `camera_operation.csv`, `camera_operation.png`): trap-nights per
  deployment ((end - start) in days); the camera-operation matrix (camtrapR's): photos per deployment and day,
  `NA` on days outside the deployment; flags for clocks that reset (photos outside the deployment period) or
  run backwards (a later file with a time more than an hour earlier), gaps of more than `gap_days` without a
  photo (mid-deployment, or before pickup), days with more than `busy_day` photos, and no night photo
  (21:00-03:00) among `min_night_photos` or more.
- Per species and deployment (`species.csv`, `species_by_deployment.csv`, `rai.png`): detections; independent
  events (records of the species at the deployment more than `independence` minutes after the previous one,
  camtrapR's `deltaTimeComparedTo = "lastRecord"`); RAI = events per 100 trap-nights; naive occupancy.
- Detection histories (`histories/<species>.csv`): deployment x occasion of `occasion` days from the first
  deployment's start; 1 detected, 0 not, NA where the camera did not run in the occasion. For species seen
  at three or more deployments, the single-season occupancy model (`trapkit.ecology.occupancy`,
  `occupancy.csv`, `occupancy.png`).
- Activity (`activity.csv`, `activity.png`, `overlap.csv`): each species' kernel density of event times on the
  24-hour circle (`trapkit.ecology.activity`), and the overlap coefficient of the `overlap` pair.
- Accuracy against verified answers (`accuracy.csv`, `confusion.csv`, `confusion.png`,
  `class_thresholds.csv`): per-class precision and recall of the model's top label against the people's; the
  lowest confidence per class at which its precision reaches `target_precision`, as the `label,threshold` CSV
  that `trapkit classify --class-thresholds` reads.

`report.html` holds every table and picture (PNGs as data URIs), and loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

from trapkit.answers import WRONG_BOX
from trapkit.atomic import atomic_write_bytes, atomic_write_text, check_writable
from trapkit.ecology import activity, occupancy
from trapkit.ecology.settings import ReportSettings
from trapkit.ecology.survey import Survey
from trapkit.errors import TrapkitError
from trapkit.figures import figure_png, new_figure

log = logging.getLogger(__name__)

MIN_SITES_FOR_MODEL = 3
NIGHT_HOURS = (21, 22, 23, 0, 1, 2)  # the core of the night at any latitude below the polar circles


@dataclass
class Report:
    out: Path
    deployments: int = 0
    species: int = 0
    events: int = 0
    flags: int = 0
    written: list[Path] = field(default_factory=list)


@dataclass
class _Tables:
    """Each output table as (header, rows), in the order they appear in report.html."""

    tables: dict[str, tuple[list[str], list[list]]] = field(default_factory=dict)
    pictures: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def write_report(survey: Survey, out: str | Path, settings: ReportSettings = ReportSettings()) -> Report:
    """Compute the report of `survey` and write it into `out` (module docstring)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrapkitError(f"--out {out} is a file; give a folder for the report")
    check_writable("--out", out, out)
    if not survey.media or not any(survey.media.values()):
        raise TrapkitError("the season holds no timed media: an empty season has nothing to report")
    t = _Tables()
    trap_nights = _effort(survey, settings, t)
    events = _species(survey, settings, trap_nights, t)
    histories = _histories(survey, settings, t)
    _occupancy(histories, t)
    _activity(events, survey, settings, t)
    if survey.verified:
        _accuracy(survey, settings, t)
    else:
        t.notes.append("No verified answers: give --verified ANSWERS.csv (or a review --write-verified copy) for the "
                       "model's accuracy on this season.")
    report = Report(out, len(survey.deployments), len({s[2] for s in survey.sightings}),
                    sum(len(v) for v in events.values()), len(t.tables.get("flags.csv", ([], []))[1]))
    files: dict[str, bytes | str] = {}
    for name, (header, rows) in t.tables.items():
        files[name] = _csv(header, rows)
    for name, png in t.pictures.items():
        files[name] = png
    files["report.html"] = _html(survey, settings, t)
    for name, data in files.items():
        (atomic_write_text if isinstance(data, str) else atomic_write_bytes)(out / name, data)
        report.written.append(out / name)
    return report


def _csv(header, rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return buf.getvalue()


def _cell(v):
    if v is None:
        return "NA"
    if isinstance(v, float):
        return "NA" if math.isnan(v) else f"{v:.6g}" if abs(v) < 1e6 else f"{v:.0f}"
    return v


# -- effort and camera health -----------------------------------------------------------------------------------------

def _days(start: datetime, end: datetime) -> list[date]:
    return [start.date() + timedelta(days=k) for k in range((end.date() - start.date()).days + 1)]


def _effort(survey: Survey, s: ReportSettings, t: _Tables) -> dict[str, float]:
    trap_nights, rows, flags = {}, [], []
    first = min(start for start, _ in survey.deployments.values())
    last = max(end for _, end in survey.deployments.values())
    all_days = _days(first, last)
    operation = []
    for dep, (start, end) in survey.deployments.items():
        media = survey.media.get(dep, [])
        nights = (end - start).total_seconds() / 86400
        trap_nights[dep] = nights
        times = sorted(m for _, m in media)
        per_day = Counter(m.date() for _, m in media)
        rows.append([dep, start.isoformat(timespec="seconds"), end.isoformat(timespec="seconds"), round(nights, 2),
                     len(media), len(per_day), times[0].isoformat(timespec="seconds") if times else None,
                     times[-1].isoformat(timespec="seconds") if times else None])
        running = set(_days(start, end))
        operation.append([dep] + [per_day.get(d, 0) if d in running else None for d in all_days])
        flags += [[dep, kind, detail] for kind, detail in _health(media, start, end, per_day, s)]
    t.tables["effort.csv"] = (["deployment", "start", "end", "trap_nights", "photos", "days_with_photos",
                               "first_photo", "last_photo"], rows)
    t.tables["camera_operation.csv"] = (["deployment"] + [d.isoformat() for d in all_days], operation)
    t.tables["flags.csv"] = (["deployment", "flag", "detail"], flags)
    t.pictures["camera_operation.png"] = _operation_png(survey, all_days, operation, flags)
    return trap_nights


def _health(media, start, end, per_day, s: ReportSettings):
    if not media:
        yield "no photos", "the camera took no timed photo"
        return
    outside = [f for f, m in media if m < start - timedelta(days=1) or m > end + timedelta(days=1)]
    if outside:
        yield "clock reset", f"{len(outside)} photos dated outside the deployment period (e.g. {outside[0]})"
    back = [b[0] for a, b in zip(media, media[1:]) if b[1] < a[1] - timedelta(hours=1)]
    if back:
        yield "clock runs backwards", f"{len(back)} times a later file is more than an hour earlier (e.g. {back[0]})"
    times = sorted(m for _, m in media if start <= m <= end)
    edges = [start, *times, end]
    for k, (a, b) in enumerate(zip(edges, edges[1:])):
        gap = (b - a).total_seconds() / 86400
        if gap > s.gap_days:
            where = "before pickup" if k == len(edges) - 2 else "after setup" if k == 0 else "mid-deployment"
            yield f"gap {where}", f"{gap:.1f} days without a photo ({a:%Y-%m-%d} to {b:%Y-%m-%d})"
    busy = sorted((n, d) for d, n in per_day.items() if n > s.busy_day)
    if busy:
        yield "busy days", f"{len(busy)} days with more than {s.busy_day} photos (most: {busy[-1][0]} on " \
                           f"{busy[-1][1]}): vegetation or sun in front of the sensor?"
    if len(media) >= s.min_night_photos and not any(m.hour in NIGHT_HOURS for _, m in media):
        yield "no night photos", f"none of {len(media)} photos taken between 21:00 and 03:00: check the infrared flash"


# -- species: detections, events, RAI, naive occupancy --------------------------------------------------------------

def independent_events(sightings, minutes: float) -> dict[tuple[str, str], list[datetime]]:
    """{(taxon, deployment): [event start times]}: a record more than `minutes` after the previous record of the
    same taxon at the same deployment starts a new event."""
    by = defaultdict(list)
    for dep, when, taxon, _ in sightings:
        by[(taxon, dep)].append(when)
    out = {}
    gap = timedelta(minutes=minutes)
    for key, times in by.items():
        times.sort()
        starts = [times[0]]
        starts += [b for a, b in zip(times, times[1:]) if b - a > gap]
        out[key] = starts
    return out


def _species(survey: Survey, s: ReportSettings, trap_nights, t: _Tables):
    events = independent_events(survey.sightings, s.independence)
    taxa = sorted({k[0] for k in events})
    deps = list(survey.deployments)
    total_nights = sum(trap_nights.values())
    rows, per_dep = [], []
    for taxon in taxa:
        n_events = sum(len(events.get((taxon, d), ())) for d in deps)
        seen = [d for d in deps if events.get((taxon, d))]
        rows.append([taxon, survey.shown.get(taxon, ""), sum(survey.detections[(taxon, d)] for d in deps), n_events,
                     100 * n_events / total_nights if total_nights else None, len(seen), len(deps),
                     len(seen) / len(deps)])
        for d in deps:
            e = len(events.get((taxon, d), ()))
            per_dep.append([taxon, d, survey.detections[(taxon, d)], e,
                            100 * e / trap_nights[d] if trap_nights[d] > 0 else None])
    t.tables["species.csv"] = (["species", "common_name", "detections", "events", "rai_per_100_trap_nights",
                                "deployments_detected", "deployments", "naive_occupancy"], rows)
    t.tables["species_by_deployment.csv"] = (["species", "deployment", "detections", "events",
                                              "rai_per_100_trap_nights"], per_dep)
    if rows:
        t.pictures["rai.png"] = _bar_png([r[0] for r in rows], [r[4] or 0 for r in rows],
                                         "events per 100 trap-nights (RAI)")
    return {taxon: sorted(x for d in deps for x in events.get((taxon, d), ())) for taxon in taxa}


def _histories(survey: Survey, s: ReportSettings, t: _Tables) -> dict[str, np.ndarray]:
    first = min(start for start, _ in survey.deployments.values()).date()
    last = max(end for _, end in survey.deployments.values()).date()
    n_occ = (last - first).days // s.occasion + 1
    deps = list(survey.deployments)
    ran = np.zeros((len(deps), n_occ), bool)
    for i, (start, end) in enumerate(survey.deployments.values()):
        for day in _days(start, end):
            ran[i, (day - first).days // s.occasion] = True
    detected: dict[str, np.ndarray] = {}
    index = {d: i for i, d in enumerate(deps)}
    for dep, when, taxon, _ in survey.sightings:
        k = (when.date() - first).days // s.occasion
        if dep in index and 0 <= k < n_occ and ran[index[dep], k]:
            detected.setdefault(taxon, np.zeros((len(deps), n_occ), bool))[index[dep], k] = True
    starts = [(first + timedelta(days=k * s.occasion)).isoformat() for k in range(n_occ)]
    histories = {}
    for taxon in sorted(detected):
        h = np.where(ran, detected[taxon].astype(np.float64), np.nan)
        histories[taxon] = h
        t.tables[f"histories/{_file_name(taxon)}.csv"] = (["deployment"] + starts,
                                                          [[d] + [None if math.isnan(v) else int(v) for v in row]
                                                           for d, row in zip(deps, h)])
    return histories


def _file_name(taxon: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in taxon)[:80] or "_"


def _occupancy(histories: dict[str, np.ndarray], t: _Tables) -> None:
    rows = []
    for taxon, h in histories.items():
        sites = int((np.nan_to_num(h) > 0).any(axis=1).sum())
        if sites < MIN_SITES_FOR_MODEL:
            continue
        fit = occupancy.fit(h)
        if fit is None:
            continue
        naive = sites / max(1, int((~np.isnan(h)).any(axis=1).sum()))
        rows.append([taxon, naive, fit.psi, fit.psi_low, fit.psi_high, fit.p, fit.p_low, fit.p_high, fit.sites,
                     fit.detected, fit.occasions])
    t.tables["occupancy.csv"] = (["species", "naive_occupancy", "psi", "psi_low_95", "psi_high_95",
                                  "p_per_occasion", "p_low_95", "p_high_95", "deployments", "detected",
                                  "surveyed_occasions"], rows)
    if rows:
        t.pictures["occupancy.png"] = _occupancy_png(rows)
    else:
        t.notes.append(f"No species was seen at {MIN_SITES_FOR_MODEL} or more deployments: no occupancy model.")


# -- activity -------------------------------------------------------------------------------------------------------

def _activity(events: dict[str, list[datetime]], survey: Survey, s: ReportSettings, t: _Tables) -> None:
    at = activity.grid()
    curves, columns = [], []
    for taxon, times in events.items():
        if len(times) >= 2:
            curves.append(activity.density(activity.angles(times), at))
            columns.append(taxon)
    if curves:
        hours = at / (2 * math.pi) * 24
        t.tables["activity.csv"] = (["hour", *columns], [[round(h, 4), *(float(c[k]) for c in curves)]
                                                         for k, h in enumerate(hours)])
        t.pictures["activity.png"] = _activity_png(hours, columns, curves, events)
    if s.overlap is not None:
        a, b = (_match(name, events, survey) for name in s.overlap)
        if len(events[a]) < 2 or len(events[b]) < 2:
            raise TrapkitError(f"--overlap needs at least 2 events of each species; {a} has {len(events[a])}, {b} "
                               f"has {len(events[b])}")
        value, estimator = activity.overlap(activity.angles(events[a]), activity.angles(events[b]))
        t.tables["overlap.csv"] = (["species_a", "species_b", "events_a", "events_b", "estimator", "overlap"],
                                   [[a, b, len(events[a]), len(events[b]), estimator, value]])


def _match(name: str, events, survey: Survey) -> str:
    wanted = name.strip().lower()
    for taxon in events:
        if wanted in (taxon.lower(), survey.shown.get(taxon, "").lower(), survey.label.get(taxon, "").lower()):
            return taxon
    raise TrapkitError(f"--overlap {name!r} is no species with events this season; they are "
                       f"{', '.join(sorted(events)) or 'none'}")


# -- accuracy -------------------------------------------------------------------------------------------------------

def class_thresholds(pairs, target: float) -> dict[str, tuple[float | None, float, int, int]]:
    """{label: (threshold or None, precision there, detections kept, correct kept)} per machine label: the lowest
    confidence at which the model's precision for that label reaches `target` on the verified detections."""
    by = defaultdict(list)
    for v in pairs:
        if v.machine is not None and v.confidence is not None:
            by[v.machine].append((float(v.confidence), v.human == v.machine))
    out = {}
    for label, items in by.items():
        items.sort(reverse=True)
        correct = 0
        best = None
        for k, (conf, ok) in enumerate(items, 1):
            correct += ok
            # a bar at `conf` keeps every detection at or above it (ties included)
            if (k == len(items) or items[k][0] < conf) and correct / k >= target:
                best = (conf, correct / k, k, correct)
        out[label] = best if best is not None else (None, sum(ok for _, ok in items) / len(items), len(items),
                                                    sum(ok for _, ok in items))
    return out


def _accuracy(survey: Survey, s: ReportSettings, t: _Tables) -> None:
    pairs = survey.verified
    machine = sorted({v.machine or "(none)" for v in pairs})
    human = sorted({v.human for v in pairs})
    labels = sorted(set(machine) | set(human), key=lambda x: (x == WRONG_BOX, x == "(none)", x))
    confusion = Counter((v.human, v.machine or "(none)") for v in pairs)
    t.tables["confusion.csv"] = (["verified \\ model", *labels],
                                 [[h, *(confusion[(h, m)] for m in labels)] for h in labels])
    rows = []
    for label in labels:
        if label in (WRONG_BOX, "(none)"):
            continue
        tp = confusion[(label, label)]
        said = sum(confusion[(h, label)] for h in labels)
        truly = sum(confusion[(label, m)] for m in labels)
        rows.append([label, said, truly, tp, tp / said if said else None, tp / truly if truly else None])
    t.tables["accuracy.csv"] = (["class", "model_said", "verified_as", "agreed", "precision", "recall"], rows)
    t.pictures["confusion.png"] = _confusion_png(labels, confusion)
    bars = class_thresholds(pairs, s.target_precision)
    thresholds, unreached = [], []
    for label in sorted(bars):
        if label not in survey.labels:
            continue  # a rollup taxon or a new class: classify --class-thresholds takes the model's classes only
        bar, precision, kept, correct = bars[label]
        if bar is None:
            unreached.append(label)
            thresholds.append([label, 1.0, precision, kept, correct, "target not reached: only a confidence of 1 "
                               "passes"])
        else:
            thresholds.append([label, round(bar, 4), precision, kept, correct, ""])
    t.tables["class_thresholds.csv"] = (["label", "threshold", "precision", "verified_kept", "agreed_kept", "note"],
                                        thresholds)
    agreed = sum(v.human == v.machine for v in pairs)
    t.notes.append(f"{len(pairs)} verified detections; the model agreed on {agreed} ({agreed / len(pairs):.0%}). "
                   f"class_thresholds.csv: the lowest confidence per class at which precision reaches "
                   f"{s.target_precision:g} (trapkit classify --class-thresholds class_thresholds.csv)"
                   + (f"; not reached for {', '.join(unreached)}" if unreached else "") + ".")


# -- pictures -------------------------------------------------------------------------------------------------------

def _operation_png(survey: Survey, days, operation, flags) -> bytes:
    import matplotlib.dates as mdates

    fig = new_figure(10, 0.45 * len(operation) + 1.6)
    ax = fig.subplots()
    flagged = {f[0] for f in flags}
    for i, row in enumerate(operation):
        dep = row[0]
        start, end = (t.replace(tzinfo=None) for t in survey.deployments[dep])  # the camera's clock, as the dates
        ax.plot([start, end], [i, i], color="#c9d8c5", lw=9, solid_capstyle="butt")
        with_photos = [d for d, v in zip(days, row[1:]) if v]
        counts = [v for v in row[1:] if v]
        ax.scatter(with_photos, [i] * len(with_photos), s=[6 + 4 * math.sqrt(c) for c in counts],
                   color="#9b2d20" if dep in flagged else "#1f5f8b", zorder=3)
    ax.set_yticks(range(len(operation)), [r[0] for r in operation], fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax.set_title("camera operation: deployment period (band), days with photos (dots; red: flagged)", fontsize=9)
    return figure_png(fig, dpi=90)


def _bar_png(names, values, title) -> bytes:
    fig = new_figure(8, 0.35 * len(names) + 1.4)
    ax = fig.subplots()
    ax.barh(range(len(names)), values, color="#1f5f8b")
    ax.set_yticks(range(len(names)), names, fontsize=8, style="italic")
    ax.invert_yaxis()
    ax.set_xlabel(title, fontsize=9)
    return figure_png(fig, dpi=90)


def _occupancy_png(rows) -> bytes:
    fig = new_figure(8, 0.45 * len(rows) + 1.4)
    ax = fig.subplots()
    for i, r in enumerate(rows):
        ax.plot([r[3], r[4]], [i, i], color="#1f5f8b", lw=2)
        ax.scatter([r[2]], [i], color="#1f5f8b", zorder=3, label="psi (95% profile interval)" if i == 0 else None)
        ax.scatter([r[1]], [i], marker="x", color="#9b2d20", zorder=3, label="naive occupancy" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8, style="italic")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("occupancy", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return figure_png(fig, dpi=90)


def _activity_png(hours, names, curves, events) -> bytes:
    fig = new_figure(9, 4)
    ax = fig.subplots()
    order = sorted(range(len(names)), key=lambda k: -len(events[names[k]]))[:8]
    for k in order:
        ax.plot(hours, curves[k] * 2 * math.pi / 24, label=f"{names[k]} ({len(events[names[k]])} events)")
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 3))
    ax.set_xlabel("time of day (camera clock)", fontsize=9)
    ax.set_ylabel("share of activity per hour", fontsize=9)
    ax.legend(fontsize=7)
    return figure_png(fig, dpi=90)


def _confusion_png(labels, confusion) -> bytes:
    n = len(labels)
    m = np.array([[confusion[(h, p)] for p in labels] for h in labels], float)
    fig = new_figure(0.55 * n + 3, 0.5 * n + 2.2)
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("model", fontsize=8)
    ax.set_ylabel("verified", fontsize=8)
    return figure_png(fig, dpi=90)


# -- report.html ----------------------------------------------------------------------------------------------------

_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1em}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.note{color:#555}.flag{color:#9b2d20}"""
_SECTIONS = (
    ("Effort and camera health", ("effort.csv", "flags.csv"), ("camera_operation.png",)),
    ("Species", ("species.csv", "species_by_deployment.csv"), ("rai.png",)),
    ("Occupancy (MacKenzie et al. 2002)", ("occupancy.csv",), ("occupancy.png",)),
    ("Activity", ("overlap.csv",), ("activity.png",)),
    ("Model accuracy on this season", ("accuracy.csv", "class_thresholds.csv", "confusion.csv"), ("confusion.png",)),
)


def _html(survey: Survey, s: ReportSettings, t: _Tables) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             # Nothing may load from anywhere: pictures are data URIs, the style is inline.
             "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
             "style-src 'unsafe-inline'\">",
             "<title>trapkit season report</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>Season report</h1>",
             f"<p class='note'>{e(survey.source)}: {len(survey.deployments)} deployments, "
             f"{sum(len(v) for v in survey.media.values())} timed media; independence {s.independence:g} min, "
             f"occasions of {s.occasion} days. Written by trapkit report; the tables are CSV files beside this "
             "page.</p>"]
    parts += [f"<p class='note'>{e(n)}</p>" for n in t.notes]
    for title, tables, pictures in _SECTIONS:
        present = [n for n in tables if n in t.tables] + [p for p in pictures if p in t.pictures]
        if not present:
            continue
        parts.append(f"<h2>{e(title)}</h2>")
        for name in pictures:
            if name in t.pictures:
                data = base64.b64encode(t.pictures[name]).decode()
                parts.append(f"<p><img alt='{e(name)}' src='data:image/png;base64,{data}'></p>")
        for name in tables:
            if name in t.tables:
                parts.append(_html_table(name, *t.tables[name]))
    histories = sorted(n for n in t.tables if n.startswith("histories/"))
    if histories:
        parts.append(f"<h2>Detection histories ({s.occasion}-day occasions; NA: the camera did not run)</h2>")
        parts += [_html_table(n, *t.tables[n]) for n in histories]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_table(name: str, header, rows, limit: int = 200) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(_cell(v)))}</td>" for v in row) + "</tr>" for row in rows[:limit])
    more = f"<p class='note'>{len(rows) - limit} more rows in {e(name)}</p>" if len(rows) > limit else ""
    return f"<h3>{e(name)}</h3><table><tr>{head}</tr>{body}</table>{more}"


def describe(report: Report) -> str:
    return (f"season report in {report.out}: {report.deployments} deployments, {report.species} species, "
            f"{report.events} independent events, {report.flags} camera-health flags; open "
            f"{report.out / 'report.html'}")
