"""What the season report counts, from a classify output (`trapkit.ecology.season`) or a Camtrap DP package.

A `Survey` is the season reduced to what ecologists count:
- deployments with their start and end (the photo span where the sheet gives none), and every media timestamp
  (for effort and camera health), in file order;
- `sightings`: one per media and taxon, with the most individuals of that taxon in one photo or frame of it;
- `detections`: animal observations per (taxon, deployment);
- `verified`: answered detections beside the model's answer (classify outputs only).

Only animal observations with a name count: blanks, humans, vehicles, unclassified media and `[wrong box]`
answers never do. Names are scientific names where the model's taxonomy gives them, else labels.

A Camtrap DP package (trapkit's or another tool's) is read from its CSVs: media-level animal observations
where there are any (a person's observation of a media replaces the machine's), else event-level ones at their
event start.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from trapkit.ecology.season import Season, Verified
from trapkit.errors import TrapkitError


@dataclass
class Survey:
    deployments: dict[str, tuple[datetime, datetime]]
    media: dict[str, list[tuple[str, datetime]]]  # deployment -> [(file, timestamp)] in file order
    sightings: list[tuple[str, datetime, str, int]]  # (deployment, timestamp, taxon, individuals)
    detections: Counter = field(default_factory=Counter)  # (taxon, deployment) -> animal observations
    shown: dict[str, str] = field(default_factory=dict)  # taxon -> common name where known
    label: dict[str, str] = field(default_factory=dict)  # taxon -> the model's class label
    verified: list[Verified] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # the model's class labels (for class thresholds)
    source: str = ""


def from_season(season: Season) -> Survey:
    deployments = {d.id: (d.start, d.end) for d in season.deployments.values()}
    media: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for m in season.media:
        media[m.deployment].append((m.file, m.timestamp))
    sightings, detections, shown, label = [], Counter(), {}, {}
    per_media: Counter = Counter()  # (entry, taxon) -> individuals, for the current media
    current = -1

    def close(m: int) -> None:
        best: dict[str, int] = {}
        for (_, taxon), n in per_media.items():
            best[taxon] = max(best.get(taxon, 0), n)
        media_ = season.media[m]
        sightings.extend((media_.deployment, media_.timestamp, t, n) for t, n in best.items())
        per_media.clear()

    for obs in season.observations():
        if obs.media != current:
            if current >= 0:
                close(current)
            current = obs.media
        if obs.kind != "animal" or obs.name is None or obs.name.scientific is None:
            continue
        taxon = obs.name.scientific
        shown.setdefault(taxon, obs.name.common)
        label.setdefault(taxon, obs.name.label)
        per_media[(obs.entry, taxon)] += 1
        detections[(taxon, season.media[obs.media].deployment)] += 1
    if current >= 0:
        close(current)
    labels = list((season.doc.get("classification_categories") or {}).values())
    return Survey(deployments, {k: sorted(v) for k, v in media.items()}, sightings, detections, shown, label,
                  season.verified(), labels, "classify output")


def from_package(folder: str | Path) -> Survey:
    """A Camtrap DP package's deployments, media and animal observations (module docstring)."""
    from trapkit.ecology.season import parse_time

    folder = Path(folder)
    for name in ("datapackage.json", "deployments.csv", "media.csv", "observations.csv"):
        if not (folder / name).is_file():
            raise TrapkitError(f"{folder} is not a Camtrap DP package: it has no {name}; give a package folder or "
                               "a trapkit classify output")
    try:
        json.loads((folder / "datapackage.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrapkitError(f"{folder / 'datapackage.json'} is not readable JSON ({e.__class__.__name__})") from None

    def rows(name):
        with open(folder / name, newline="", encoding="utf-8-sig") as f:
            yield from csv.DictReader(f)

    def when(text, where):
        value = parse_time(text or "", None)
        if value is None or value.tzinfo is None:
            raise TrapkitError(f"{folder / where}: {text!r} is not a Camtrap DP timestamp (ISO 8601 with offset)")
        return value

    deployments = {r["deploymentID"]: (when(r["deploymentStart"], "deployments.csv"),
                                       when(r["deploymentEnd"], "deployments.csv")) for r in rows("deployments.csv")}
    media: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    media_of = {}
    for r in rows("media.csv"):
        t = when(r["timestamp"], "media.csv")
        media[r["deploymentID"]].append((r.get("filePath") or r["mediaID"], t))
        media_of[r["mediaID"]] = (r["deploymentID"], t)
    # Only what is counted is kept: (scientific name, individuals, by a person) per media; event rows likewise.
    by_media: dict[str, list[tuple[str, int, bool]]] = defaultdict(list)
    events = []
    for r in rows("observations.csv"):
        if r.get("observationType") != "animal" or not r.get("scientificName"):
            continue
        count = int(float(r.get("count") or 1))
        if r.get("observationLevel") == "media" and r.get("mediaID") in media_of:
            by_media[r["mediaID"]].append((r["scientificName"], count, r.get("classificationMethod") == "human"))
        elif r.get("observationLevel") == "event":
            events.append((r["deploymentID"], r["eventStart"], r["scientificName"], count))
    sightings, detections = [], Counter()
    if by_media:
        for media_id, found in by_media.items():
            if any(human for _, _, human in found):
                found = [f for f in found if f[2]]
            deployment, t = media_of[media_id]
            per_taxon: Counter = Counter()
            for taxon, n, _ in found:
                per_taxon[taxon] += n
                detections[(taxon, deployment)] += 1
            sightings += [(deployment, t, taxon, n) for taxon, n in per_taxon.items()]
    else:
        for deployment, start, taxon, n in events:
            sightings.append((deployment, when(start, "observations.csv"), taxon, n))
            detections[(taxon, deployment)] += 1
    return Survey(deployments, {k: sorted(v) for k, v in media.items()}, sightings, detections,
                  source=f"Camtrap DP package {folder.name}")
