"""`trapkit label RUN`: answer an active-learning round's label request on the verification grid.

The page is trapkit's grid (trapkit/grid.py, the same page and keys as
`trapkit review`) over the items the current round asks about, each shown
with the model's guess as its species. Every answer is saved at once through
`trapkit.train.labels.save_answers` into the run's inbox
(`RUN/inbox/round-NNN-page.csv`), the answers file `trapkit al next`
ingests, so a closed tab or a stopped server loses nothing; reopening the
page starts at the first page with an unanswered item. Names that are not
classes yet are refused unless the page runs with `--allow-new-classes`.

"Similar" sorts by the run's own stored embeddings (RUN/embeddings, one row
per manifest row); `e` groups by camera-trap sequence (`trapkit.sequences`,
EXIF times read from the image headers).
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import numpy as np

from trapkit import grid
from trapkit.answers import item_key
from trapkit.errors import TrapkitError
from trapkit.sequences import sequence_ids
from trapkit.train import labels as label_api
from trapkit.train.run import Run

log = logging.getLogger(__name__)


class LabelSource(grid.FileGridSource):
    """The current round's request as a grid source (see trapkit.grid.GridSource)."""

    done_word = "answered"

    def __init__(self, run_dir: str | Path, allow_new_classes: bool = False):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.run = Run(self.run_dir)
        self.run.require()
        self._allow_new_classes = allow_new_classes
        self._round = None
        self._request: list = []
        self._vectors = None
        self.refresh()

    def refresh(self) -> None:
        """Read the request again (`al next` may have started a new round)."""
        self._round = self.run.load_state().round
        self._settings = self.run.settings()
        self._request = label_api.current_request(self.run_dir)
        self.margin = self._margin()  # read once a round, not per thumbnail
        if not self._request:
            raise TrapkitError(f"the current round of {self.run_dir} requests no images; run 'trapkit al next'")
        self._label_keys = {item_key(*it.key): it.key for it in self._request}
        self.answers_path = label_api.page_answers_path(self.run_dir)
        self.title = f"trapkit label: {self.run_dir.name}, round {self._round}"
        self._vectors = None

    def stale(self) -> bool:
        """True once the run has moved to another round: the grid then reloads."""
        if self.run.load_state().round != self._round:
            self.refresh()
            return True
        return False

    @property
    def allow_new_classes(self) -> bool:
        """`--allow-new-classes`, or a run with no class yet (started without a seed): its first answers name them."""
        return self._allow_new_classes or not self.classes()

    # -- GridSource ----------------------------------------------------------------------

    def classes(self) -> list[str]:
        return label_api.class_names(self.run_dir)

    def taxa(self) -> list[str]:
        """A season's first guesses that are taxa above the classes (`classify --rollup`): confirm or refine."""
        classes = set(self.classes())
        return sorted({it.guess for it in self._request if it.guess and it.guess not in classes})

    def items(self) -> list[grid.GridItem]:
        return [grid.GridItem(item_key(*it.key), it.path, it.detection, it.bbox, it.guess, it.confidence)
                for it in self._request]

    def answers(self) -> dict[str, str]:
        return {item_key(*it.key): it.answered for it in label_api.current_request(self.run_dir) if it.answered}

    def save(self, changes: dict[str, str | None]) -> dict[str, str]:
        unknown = [k for k in changes if k not in self._label_keys]
        if unknown:
            raise TrapkitError(f"not in the current request: {unknown[0]}; reload the labelling page")
        label_api.save_answers(self.run_dir, {self._label_keys[k]: s or "" for k, s in changes.items()},
                               allow_new_classes=self.allow_new_classes)
        return self.answers()

    def image_path(self, file: str) -> Path:
        return self.run.pool_file(file, self._settings)

    def sequence(self, item: grid.GridItem) -> list[str]:
        """Keys of the requested items in the item's camera-trap sequence (same folder, EXIF times within the
        run's --sequence-gap, the grouping `al` selects by)."""
        folder = str(PurePosixPath(item.file).parent)
        files = sorted({it.path for it in self._request if str(PurePosixPath(it.path).parent) == folder})
        ids = sequence_ids(files, [self.capture_time(f) for f in files], self._settings.select.sequence_gap)
        mine = ids[files.index(item.file)]
        same = {f for f, n in zip(files, ids) if n == mine}
        return [item_key(*it.key) for it in self._request if it.path in same]

    def embeddings(self, items: list[grid.GridItem]) -> np.ndarray | None:
        """(n, D) float32 from the run's embeddings cache (row = manifest row); None when the run has none yet."""
        if self._vectors is None:
            self._vectors = self._stored_embeddings()
        if self._vectors is None:
            return None
        table, row_of = self._vectors
        missing = [it.key for it in items if it.key not in row_of]
        if missing:
            raise TrapkitError(f"the run's embeddings do not cover {missing[0]}; run 'trapkit al next' first")
        return np.asarray(table[[row_of[it.key] for it in items]], np.float32)

    # -- helpers -------------------------------------------------------------------------

    def _stored_embeddings(self):
        state = self.run.load_state()
        if not state.embedder_version:
            return None
        path = self.run.embeddings_path(state.embedder_version)
        if not path.is_file():
            return None
        df = self.run.load_manifest()
        detections = df["detection"] if "detection" in df.columns else [""] * len(df)
        row_of = {}
        for row, (split, file, det) in enumerate(zip(df["split"], df["path"], detections)):
            if split == "pool":
                row_of[item_key(file, int(det) if str(det).strip().isdigit() else None)] = row
        return np.load(path, mmap_mode="r"), row_of

    def _margin(self) -> float:
        """The crop policy of the run's model (its spec), so a crop looks as the model saw it."""
        from trapkit.spec import SPEC_FILENAME, ModelSpec

        spec = self.run.model_dir / SPEC_FILENAME
        return ModelSpec.load(spec).crop_margin if spec.is_file() else self._settings.model.crop_margin


def open_label_page(run_dir: str | Path, allow_new_classes: bool = False) -> grid.GridApp:
    """The labelling grid for RUN's current round (not yet serving); a bad RUN fails here, in one line."""
    return grid.GridApp(LabelSource(run_dir, allow_new_classes))


def serve_label_page(run_dir: str | Path, allow_new_classes: bool = False, host: str = "127.0.0.1",
                     port: int | None = None) -> None:
    """Serve the labelling page until Ctrl+C."""
    app = open_label_page(run_dir, allow_new_classes)
    log.info("labelling page for %s: %d items; answers go to %s", run_dir, len(app.items), app.source.answers_path)
    grid.serve(app, host, port)
