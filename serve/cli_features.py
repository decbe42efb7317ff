"""`trapkit features`: the morphological space of classify's features tables (registered by trapkit.app.cli).

The adapter turns flags into `FeatureSettings`; scikit-learn, pandas and
matplotlib load inside the command, so `trapkit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from trapkit.flags import default_of, given
from trapkit.serve.settings import FEATURE_GROUPINGS, FEATURE_MAPS, FeatureSettings


def register(subparsers, common) -> None:
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
    from trapkit.serve.features import analyse_features, describe

    settings = FeatureSettings(**given(morphs=args.morphs, max_morphs=args.max_morphs, by=args.by, map=args.map,
                                       examples=args.examples))
    report = analyse_features(args.tables, args.out, settings, images=args.images)
    print(describe(report))
    return 0
