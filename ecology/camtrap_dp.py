"""`trapkit camtrap-dp`: a season (`trapkit.ecology.season`) as a Camtrap DP 1.0 package (1.0.2, its patch release).

Writes `deployments.csv`, `media.csv`, `observations.csv` and, last, `datapackage.json` (the descriptor that
points at the Camtrap DP 1.0 profile and table schemas), each atomically. Observations are streamed: media
level rows are written as they are read, event level rows (one per event and observation type and taxon,
`count` the most individuals of that taxon in one media of the event) are kept as small running sums.

Project metadata (`ProjectMetadata`) comes from flags or a small JSON file; the fields the profile requires
get defaults, and `PackageReport.defaulted` names the ones that did, so the command can say so.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

from trapkit import __version__
from trapkit.atomic import atomic_path, atomic_write_json, check_writable
from trapkit.ecology.season import DEPLOYMENT_COLUMNS, Media, Name, Season, iso
from trapkit.ecology.settings import CAPTURE_METHODS, SAMPLING_DESIGNS
from trapkit.errors import TrapkitError
from trapkit.typed_json import checked, read_json

log = logging.getLogger(__name__)

CAMTRAP_DP_VERSION = "1.0.2"  # the patch release of Camtrap DP 1.0 (the 1.0 profile has a $ref validators refuse)
CAMTRAP_DP_BASE = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_DP_VERSION}"
PROFILE_URL = f"{CAMTRAP_DP_BASE}/camtrap-dp-profile.json"
TABLES = ("deployments", "media", "observations")
MEDIA_COLUMNS = ("mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic", "fileName",
                 "fileMediatype", "exifData", "favorite", "mediaComments")
OBSERVATION_COLUMNS = (
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd", "observationLevel",
    "observationType", "cameraSetupType", "scientificName", "count", "lifeStage", "sex", "behavior", "individualID",
    "individualPositionRadius", "individualPositionAngle", "individualSpeed", "bboxX", "bboxY", "bboxWidth",
    "bboxHeight", "classificationMethod", "classifiedBy", "classificationTimestamp", "classificationProbability",
    "observationTags", "observationComments")


@dataclass(frozen=True)
class ProjectMetadata:
    """What the package says about the project. Each None is defaulted (and reported as such)."""

    title: str | None = None
    contributors: tuple[str, ...] | None = None  # "Name" or "Name <email>"; the first is the contact
    license: str | None = None  # the data's licence (an SPDX name such as CC-BY-4.0)
    media_license: str | None = None
    sampling_design: str | None = None
    capture_method: tuple[str, ...] | None = None
    description: str | None = None
    project_id: str | None = None

    DEFAULTS = {"title": "Camera-trap season", "contributors": ("unnamed contributor",), "license": "CC-BY-4.0",
                "media_license": "CC-BY-4.0", "sampling_design": "opportunistic",
                "capture_method": ("activityDetection",)}

    def __post_init__(self):
        if self.sampling_design is not None and self.sampling_design not in SAMPLING_DESIGNS:
            raise TrapkitError(f"--sampling-design {self.sampling_design!r}: use one of {', '.join(SAMPLING_DESIGNS)}")
        for method in self.capture_method or ():
            if method not in CAPTURE_METHODS:
                raise TrapkitError(f"--capture-method {method!r}: use one of {', '.join(CAPTURE_METHODS)}")

    @classmethod
    def from_file(cls, path: str | Path, **flags) -> ProjectMetadata:
        """The JSON file's fields (the names above), with the flags given (not None) on top."""
        d = read_json(path, "metadata file", "give a JSON object with title, contributors, license, ...")
        if not isinstance(d, dict):
            raise TrapkitError(f"metadata file {path} is not a JSON object; give one with title, contributors, ...")
        hints = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(d) - set(hints))
        if unknown:
            raise TrapkitError(f"metadata file {path} has unknown fields {', '.join(unknown)}; known: "
                               f"{', '.join(hints)}")
        types = {"str | None": str | None, "tuple[str, ...] | None": tuple[str, ...] | None}
        values = {k: checked(v, types[hints[k]], f"metadata file {path} {k}", "fix the file") for k, v in d.items()}
        return cls(**(values | {k: v for k, v in flags.items() if v is not None}))

    def resolved(self) -> tuple[ProjectMetadata, list[str]]:
        """(every field filled, the names of those that took a default)."""
        defaulted = [k for k in self.DEFAULTS if getattr(self, k) is None]
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ProjectMetadata(**(values | {k: self.DEFAULTS[k] for k in defaulted})), defaulted


@dataclass
class PackageReport:
    out: Path
    deployments: int = 0
    media: int = 0
    observations: dict[str, int] = field(default_factory=dict)  # "media animal" -> rows
    events: int = 0
    defaulted: list[str] = field(default_factory=list)
    left_out: dict[str, list[str]] = field(default_factory=dict)


def write_package(season: Season, out: str | Path, metadata: ProjectMetadata = ProjectMetadata()) -> PackageReport:
    """The Camtrap DP package of `season` in `out` (module docstring)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrapkitError(f"--out {out} is a file; give a folder for the package")
    check_writable("--out", out, out)
    meta, defaulted = metadata.resolved()
    report = PackageReport(out, defaulted=defaulted, left_out=season.left_out)
    _write_deployments(season, out / "deployments.csv")
    report.deployments = len(season.deployments)
    _write_media(season, out / "media.csv", meta)
    report.media = len(season.media)
    taxa, levels = _write_observations(season, out / "observations.csv", report)
    atomic_write_json(out / "datapackage.json", descriptor(season, meta, taxa, levels), indent=2)
    return report


@contextlib.contextmanager
def _rows(path: Path, columns):
    """A CSV writer onto a temporary file beside `path`, renamed onto it when the block ends."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        yield writer


def _write_deployments(season: Season, path: Path) -> None:
    with _rows(path, DEPLOYMENT_COLUMNS) as writer:
        for d in season.deployments.values():
            values = dict(d.fields)
            values.update(deploymentID=d.id, latitude=f"{d.latitude:.6f}".rstrip("0").rstrip("."),
                          longitude=f"{d.longitude:.6f}".rstrip("0").rstrip("."),
                          deploymentStart=iso(d.start), deploymentEnd=iso(d.end))
            if d.timestamp_issues:
                values["timestampIssues"] = "true"
                values["deploymentComments"] = "; ".join(filter(None, [values.get("deploymentComments"),
                                                                       *d.timestamp_issues]))
            for flag in ("timestampIssues", "baitUse"):  # Camtrap DP's booleans are true/false
                if flag in values:
                    values[flag] = "true" if values[flag].lower() in ("true", "1", "yes") else "false"
            writer.writerow([values.get(c, "") for c in DEPLOYMENT_COLUMNS])


def _write_media(season: Season, path: Path, meta: ProjectMetadata) -> None:
    capture = meta.capture_method[0] if len(meta.capture_method) == 1 else ""
    with _rows(path, MEDIA_COLUMNS) as writer:
        for m in season.media:
            comment = "time from the file's modification time" if m.time_source == "file" else ""
            writer.writerow([m.id, m.deployment, capture, iso(m.timestamp), m.file, "false",
                             m.file.rsplit("/", 1)[-1], m.mediatype, "", "", comment])


@dataclass
class _Event:
    """Running sums of one event's observations of one type and taxon."""

    count: int = 0  # the most individuals in one photo or video frame
    probability: float | None = None
    human: bool = True
    by: str = ""
    when: datetime | None = None


def _write_observations(season: Season, path: Path, report: PackageReport):
    media = season.media
    # event -> first and last timestamp; (event, kind, scientific) -> _Event
    spans: dict[str, list[datetime]] = {}
    for m in media:
        s = spans.setdefault(m.event, [m.timestamp, m.timestamp])
        s[0], s[1] = min(s[0], m.timestamp), max(s[1], m.timestamp)
    events: dict[tuple[str, str, str | None], _Event] = {}
    names: dict[str, Name] = {}
    # (kind, scientific) -> individuals in the current photo (or video frame: one RESULTS entry)
    per_media: dict[tuple[str, str | None], int] = {}
    current = (-1, None)
    counts = report.observations

    def close_media(m: int) -> None:
        for (kind, sci), n in per_media.items():
            e = events[(media[m].event, kind, sci)]
            e.count = max(e.count, n)
        per_media.clear()

    stamps: dict[int, str] = {}  # media index -> its ISO timestamp (a media has several observations)
    utc = functools.lru_cache(maxsize=4096)(_utc)  # most rows share the classify run's time

    def stamp(m: Media) -> str:
        text = stamps.get(id(m))
        if text is None:
            stamps.clear()  # observations come media by media: only the current one is needed
            text = stamps[id(m)] = iso(m.timestamp)
        return text

    with _rows(path, OBSERVATION_COLUMNS) as writer:
        for obs in season.observations():
            if (obs.media, obs.entry) != current:
                if current[0] >= 0:
                    close_media(current[0])
                current = (obs.media, obs.entry)
            m = media[obs.media]
            sci = obs.name.scientific if obs.name is not None else None
            if sci is not None:
                names.setdefault(sci, obs.name)
            key = (obs.kind, sci)
            per_media[key] = per_media.get(key, 0) + (obs.detection is not None)
            e = events.setdefault((m.event, obs.kind, sci), _Event(by=obs.by))
            e.human &= obs.method == "human"
            if obs.probability is not None:
                e.probability = max(e.probability or 0.0, obs.probability)
            if obs.when is not None and (e.when is None or obs.when > e.when):
                e.when = obs.when
            at = iso(m.timestamp + timedelta(seconds=obs.offset)) if obs.offset else stamp(m)
            box = obs.bbox or ("", "", "", "")
            suffix = obs.kind if obs.detection is None else \
                obs.detection if len(m.entries) == 1 else f"{obs.entry}-{obs.detection}"  # a video's frames
            writer.writerow([
                f"{m.id}-{suffix}", m.deployment, m.id, m.event, at, at, "media", obs.kind, "",
                sci or "", 1 if obs.detection is not None and obs.kind in ("animal", "human", "vehicle") else "",
                "", "", "", "", "", "", "", *(_number(v) for v in box),
                obs.method, obs.by, utc(obs.when), _number(obs.probability), "",
                f"{obs.name.label}" if obs.name is not None and obs.name.label != sci else ""])
            counts[f"media {obs.kind}"] = counts.get(f"media {obs.kind}", 0) + 1
        if current[0] >= 0:
            close_media(current[0])
        kinds_in_event: dict[str, set[str]] = {}
        for (event, kind, _) in events:
            kinds_in_event.setdefault(event, set()).add(kind)
        deployment_of = {m.event: m.deployment for m in media}
        for n, ((event, kind, sci), e) in enumerate(sorted(events.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                           kv[0][2] or ""))):
            present = kinds_in_event[event]
            # An event is blank (or unclassified) only when none of its media shows anything else.
            if kind == "blank" and present - {"blank"}:
                continue
            if kind == "unclassified" and present - {"blank", "unclassified"}:
                continue
            start, end = spans[event]
            writer.writerow([
                f"{event}-{kind}-{n}", deployment_of[event], "", event, iso(start), iso(end), "event", kind, "", sci or "",
                e.count if kind in ("animal", "human", "vehicle") and e.count else "", "", "", "", "", "", "", "",
                "", "", "", "", "human" if e.human else "machine", e.by, utc(e.when), _number(e.probability),
                "", ""])
            counts[f"event {kind}"] = counts.get(f"event {kind}", 0) + 1
        report.events = len(spans)
    levels = ["media", "event"]
    return names, levels


def _number(value) -> str:
    if value is None or value == "":
        return ""
    return f"{float(value):.6g}"


def _utc(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") if value else ""


def descriptor(season: Season, meta: ProjectMetadata, taxa: dict[str, Name], levels: list[str]) -> dict:
    """`datapackage.json` (Camtrap DP 1.0 profile)."""
    deployments = list(season.deployments.values())
    lats = [d.latitude for d in deployments]
    lons = [d.longitude for d in deployments]
    if min(lats) == max(lats) and min(lons) == max(lons):
        spatial = {"type": "Point", "coordinates": [lons[0], lats[0]]}
    else:
        w, e, s, n = min(lons), max(lons), min(lats), max(lats)
        spatial = {"type": "Polygon", "bbox": [w, s, e, n],
                   "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    contributors = []
    for k, text in enumerate(meta.contributors):
        name, _, email = text.partition("<")
        person = {"title": name.strip(), "role": "contact" if k == 0 else "contributor"}
        if email.strip(" >"):
            person["email"] = email.strip(" >")
        contributors.append(person)
    package = {
        "profile": PROFILE_URL,
        "name": "trapkit-camtrap-dp",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "title": meta.title,
        "contributors": contributors,
        "sources": [{"title": "trapkit", "version": __version__},
                    {"title": season.classified_by}, {"title": f"MegaDetector ({season.detected_by})"}],
        "licenses": [{"name": meta.license, "scope": "data"}, {"name": meta.media_license, "scope": "media"}],
        "project": {"title": meta.title, "samplingDesign": meta.sampling_design,
                    "captureMethod": list(meta.capture_method), "individualAnimals": False,
                    "observationLevel": levels},
        "spatial": spatial,
        "temporal": {"start": min(d.start for d in deployments).date().isoformat(),
                     "end": max(d.end for d in deployments).date().isoformat()},
        "taxonomic": [_taxon(n) for _, n in sorted(taxa.items())],
        "resources": [{"name": t, "path": f"{t}.csv", "profile": "tabular-data-resource", "format": "csv",
                       "mediatype": "text/csv", "encoding": "utf-8",
                       "schema": f"{CAMTRAP_DP_BASE}/{t}-table-schema.json"} for t in TABLES],
    }
    if meta.description:
        package["project"]["description"] = meta.description
    if meta.project_id:
        package["project"]["id"] = meta.project_id
    return package


def _taxon(name: Name) -> dict:
    entry = {"scientificName": name.scientific}
    if name.rank:
        entry["taxonRank"] = name.rank
        entry["kingdom"] = "Animalia"
        for rank, value in zip(("class", "order", "family", "genus"), name.path):
            if value:
                entry[rank] = value
    if name.common:
        entry["vernacularNames"] = {"eng": name.common}
    return entry


def describe(report: PackageReport) -> str:
    """The lines `trapkit camtrap-dp` prints."""
    obs = ", ".join(f"{n} {k}" for k, n in sorted(report.observations.items()))
    lines = [f"Camtrap DP 1.0 package in {report.out}: {report.deployments} deployments, {report.media} media, "
             f"{report.events} events; observations: {obs}"]
    if report.defaulted:
        shown = {k: v if isinstance(v, str) else ", ".join(v) for k, v in ProjectMetadata.DEFAULTS.items()}
        lines.append("defaulted (give them with flags or --metadata): "
                     + "; ".join(f"{k.replace('_', '-')} = {shown[k]}" for k in report.defaulted))
    for why, files in report.left_out.items():
        lines.append(f"left out ({why}): {len(files)} media")
    return "\n".join(lines)
