"""The ecology commands (registered by trapkit.app.cli): `camtrap-dp`, `report` and `features`.

Adapters turn flags into keyword arguments and settings; pandas, scikit-learn,
matplotlib and PyAV load inside the commands, so `trapkit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from trapkit.ecology.settings import (CAPTURE_METHODS, FEATURE_GROUPINGS, FEATURE_MAPS, SAMPLING_DESIGNS, FeatureSettings,
                                      ReportSettings)
from trapkit.errors import TrapkitError
from trapkit.flags import default_of, given, not_with


def _season_args(p, what: str) -> None:
    """The flags that say how a classify output becomes a season (shared by camtrap-dp and report)."""
    p.add_argument("--images", type=Path, required=what == "package", metavar="DIR",
                   help="the IMAGES_DIR given to trapkit classify (capture times are read from its photos)")
    p.add_argument("--deployments", type=Path, metavar="CSV",
                   help="one row per deployment: deploymentID (its folder), latitude, longitude, and optionally "
                   "deploymentStart, deploymentEnd, locationName, cameraModel, ... (Camtrap DP's columns)"
                   + (". Without it a template is written and the command stops" if what == "package" else ""))
    p.add_argument("--timezone", metavar="TZ",
                   help="the camera clocks' time zone: +02:00, or a name such as Europe/Berlin (required)")
    p.add_argument("--deployment-depth", type=int, default=None, metavar="N",
                   help="folder levels under DIR that name a deployment (default 1: its first-level folder)")
    p.add_argument("--event-gap", type=float, default=None, metavar="SECONDS",
                   help="most seconds between photos of one event (default: the classify output's sequence gap, "
                   "else 60)")
    p.add_argument("--threshold", type=float, default=None,
                   help="detections at or above this confidence are observations (default: the classify output's)")
    p.add_argument("--file-times", action="store_true",
                   help="time media without a capture time by their file's modification time (else left out)")
    p.add_argument("--verified", type=Path, metavar="ANSWERS.csv",
                   help="the review page's answers (or any answers CSV): they become human observations")
    p.add_argument("--verified-by", metavar="NAME", help="who verified the answers (classifiedBy of human answers "
                   "whose row names no Reviewer, as review --reviewer writes)")


def _check_out(out: Path) -> None:
    """A file given as --out, or a place nothing can be written, stops before any photo is read."""
    from trapkit.atomic import check_writable

    if out.exists() and not out.is_dir():
        raise TrapkitError(f"--out {out} is a file; give a folder")
    check_writable("--out", out, out)


def _season(args, template_dir):
    from trapkit.ecology.season import parse_timezone, read_season

    _check_out(args.out)
    depth = args.deployment_depth if args.deployment_depth is not None else 1
    if depth < 1:
        raise TrapkitError(f"--deployment-depth {depth} must be at least 1")
    if args.event_gap is not None and not args.event_gap >= 0:
        raise TrapkitError(f"--event-gap {args.event_gap:g} must be 0 seconds or more")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise TrapkitError(f"--threshold {args.threshold} is out of range; give a detection confidence in [0, 1]")
    return read_season(args.results, args.images, args.deployments, parse_timezone(args.timezone), depth=depth,
                       gap=args.event_gap, threshold=args.threshold, file_times=args.file_times,
                       verified=args.verified, verified_by=args.verified_by or "", template_dir=template_dir)


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "camtrap-dp",
        parents=[common],
        help="a Camtrap DP 1.0 data package (GBIF, Agouti, Wildlife Insights, camtrapR) from a classify output",
        description="Write a Camtrap DP 1.0 package (datapackage.json, deployments.csv, media.csv, observations.csv) "
        "from a trapkit classify output or its verified copy: media with their capture times, media- and event-level "
        "observations with taxonomy, human answers as human classifications.",
    )
    p.add_argument("results", type=Path, metavar="RESULTS.json",
                   help="trapkit classify output, or its review --write-verified copy")
    p.add_argument("--out", type=Path, required=True, metavar="PACKAGE", help="folder for the package")
    _season_args(p, "package")
    p.add_argument("--metadata", type=Path, metavar="JSON",
                   help="project metadata: title, contributors, license, media_license, sampling_design, "
                   "capture_method, description, project_id (flags win)")
    p.add_argument("--title", help="the project's title")
    p.add_argument("--contributor", action="append", metavar="'NAME <EMAIL>'",
                   help="a contributor (repeat; the first is the contact)")
    p.add_argument("--license", help="the data's licence (default CC-BY-4.0)")
    p.add_argument("--media-license", help="the media files' licence (default CC-BY-4.0)")
    p.add_argument("--sampling-design", choices=SAMPLING_DESIGNS, help="default opportunistic")
    p.add_argument("--capture-method", choices=CAPTURE_METHODS, action="append",
                   help="default activityDetection (repeat for both)")
    p.set_defaults(func=_camtrap_dp)

    p = subparsers.add_parser(
        "report",
        parents=[common],
        help="the season report: effort, camera health, events, RAI, occupancy, activity, field accuracy",
        description="The figures ecologists compute first, from a trapkit classify output (with --images and "
        "--deployments) or a Camtrap DP package folder: CSV tables, PNG plots and one self-contained report.html.",
    )
    p.add_argument("results", type=Path, metavar="RESULTS.json|PACKAGE",
                   help="trapkit classify output (or its verified copy), or a Camtrap DP package folder")
    p.add_argument("--out", type=Path, required=True, metavar="REPORT", help="folder for the report")
    _season_args(p, "report")
    p.add_argument("--independence", type=float, default=None, metavar="MINUTES",
                   help=f"minutes between independent events of a species at a deployment (default "
                   f"{default_of(ReportSettings, 'independence'):g})")
    p.add_argument("--occasion", type=int, default=None, metavar="DAYS",
                   help=f"days per occasion of the detection histories (default {default_of(ReportSettings, 'occasion')})")
    p.add_argument("--overlap", nargs=2, metavar=("SPECIES_A", "SPECIES_B"),
                   help="the activity overlap coefficient of two species (scientific or common names)")
    p.add_argument("--target-precision", type=float, default=None, metavar="P",
                   help=f"per-class thresholds reaching this precision on the verified answers (default "
                   f"{default_of(ReportSettings, 'target_precision')})")
    p.set_defaults(func=_report)

    p = subparsers.add_parser(
        "features",
        parents=[common],
        help="morphs, a 2-D map and morph diversity from classify's --features tables",
        description="Place every detection of one or more features tables (trapkit classify --features) in a "
        "morphological space: a 2-D map coloured by species, k-means morphs with a montage of their typical crops, "
        "and per folder or per day the detections per morph with Shannon and Simpson diversity.",
    )
    p.add_argument("tables", nargs="+", type=Path, metavar="FEATURES",
                   help="features tables (.parquet or .csv with its .meta.json) of one model")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the pictures and tables")
    p.add_argument("--morphs", type=int, default=None, metavar="K",
                   help="number of morphs (default: the K with the best silhouette, up to --max-morphs)")
    p.add_argument("--max-morphs", type=int, default=None, metavar="K",
                   help=f"largest K tried without --morphs (default {default_of(FeatureSettings, 'max_morphs')})")
    p.add_argument("--by", choices=FEATURE_GROUPINGS, default=None,
                   help=f"diversity per folder (camera, site) or per day of EXIF time "
                   f"(default {default_of(FeatureSettings, 'by')})")
    p.add_argument("--map", choices=FEATURE_MAPS, default=None,
                   help="2-D map method (default auto: UMAP when umap-learn is installed and there are 50 or more "
                   "detections, else PCA)")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="the IMAGES_DIR given to classify: crops nearest each morph centre go into morphs.png "
                   "(without it, morph_examples.csv lists them and no montage is drawn)")
    p.add_argument("--examples", type=int, default=None,
                   help=f"crops per morph in the montage (default {default_of(FeatureSettings, 'examples')})")
    p.set_defaults(func=_features)


def _features(args) -> int:
    from trapkit.ecology.features import analyse_features, describe

    settings = FeatureSettings(**given(morphs=args.morphs, max_morphs=args.max_morphs, by=args.by, map=args.map,
                                       examples=args.examples))
    report = analyse_features(args.tables, args.out, settings, images=args.images)
    print(describe(report))
    return 0


def _camtrap_dp(args) -> int:
    from trapkit.ecology.camtrap_dp import ProjectMetadata, describe, write_package

    flags = dict(title=args.title, contributors=tuple(args.contributor) if args.contributor else None,
                 license=args.license, media_license=args.media_license, sampling_design=args.sampling_design,
                 capture_method=tuple(args.capture_method) if args.capture_method else None)
    metadata = ProjectMetadata.from_file(args.metadata, **flags) if args.metadata else ProjectMetadata(**flags)
    season = _season(args, template_dir=args.out)
    if not season.verified_by and metadata.contributors:
        season.verified_by = metadata.contributors[0].partition("<")[0].strip()
    print(describe(write_package(season, args.out, metadata)))
    return 0


def _report(args) -> int:
    from trapkit.ecology.report import describe, write_report
    from trapkit.ecology.survey import from_package, from_season

    settings = ReportSettings(**given(independence=args.independence, occasion=args.occasion,
                                      target_precision=args.target_precision,
                                      overlap=tuple(args.overlap) if args.overlap else None))
    if args.results.is_dir():
        not_with("a Camtrap DP package", True, {
            "--images": args.images is not None, "--deployments": args.deployments is not None,
            "--timezone": args.timezone is not None, "--deployment-depth": args.deployment_depth is not None,
            "--event-gap": args.event_gap is not None, "--threshold": args.threshold is not None,
            "--file-times": args.file_times, "--verified": args.verified is not None,
            "--verified-by": args.verified_by is not None}, "the package already holds its deployments, times and "
            "observations: leave them out")
        survey = from_package(args.results)
    else:
        if args.images is None:
            raise TrapkitError("give --images, the IMAGES_DIR given to trapkit classify (or give a Camtrap DP package "
                               "folder instead of RESULTS.json)")
        survey = from_season(_season(args, template_dir=args.out))
    print(describe(write_report(survey, args.out, settings)))
    return 0
