"""The verification grid: a small web app over any "source" of crops to check, keyboard-first.

Two stages use it: `trapkit review` (a classify result: serve/review.py) and
`trapkit label` (an active-learning round's request: train/label_page.py).
Each hands the grid a `GridSource`; the grid serves one static page
(trapkit/static/grid.*) and a small JSON API on a threaded stdlib HTTP server:

```
GET  /                    the page                  GET /thumb?key=K    one crop, JPEG (cut once, cached)
GET  /api/state           classes, sidebar groups, counts, keys, answers file, version
GET  /api/page?group=G&order=low|high|similar&ref=K&page=N&size=S
                          one page of items (page=-1: the first page with an unanswered item)
POST /api/decide          {"changes": [{"key", "species" (null removes), "expect"?}]}: saved at once
POST /api/sequence        {"key"}: the crop's sequence gets its majority species
GET  /api/frame?key=K     the whole image, for the large view (the box is drawn by the page)
```

Items are grouped by the model's species (the sidebar, most crops first), then
ordered by confidence, or by cosine distance to one crop ("similar"); only
one page of items ever goes to the browser. Thumbnails are cut per image
(one decode for all of that image's crops on a page) in worker threads,
kept in a byte-bounded cache, and the next page is cut while the person
looks at this one.

Answers: the server is the only writer. Every change goes through
`GridSource.save` under one lock, which merges by key with what is on disk
and writes atomically, so two tabs never lose each other's answers. A change
with `expect` is applied only when the answer is still what the tab saw
(undo, and accept-as-shown on a page another tab changed meanwhile).

The server listens on 127.0.0.1 unless told otherwise, answers only requests
whose Host header names this machine (a DNS-rebinding page cannot reach it)
unless the host exposes it on purpose, accepts POSTs only as JSON from its own
origin, and never contacts anything itself.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import socket
import threading
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import numpy as np

from trapkit.answers import WRONG_BOX, clean_species  # WRONG_BOX: "not an animal / wrong box", never a class
from trapkit.errors import TrapkitError
from trapkit.images import ImageReadError, open_image, read_header
from trapkit.web import WILDCARD_HOSTS, allowed_host_names, host_allowed

log = logging.getLogger(__name__)

PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
THUMB_SIZE = 224  # px; shown at about 150 CSS px, sharp on 1.5x screens
FRAME_SIZE = 1600  # longest side of the large view
GREY = (128, 128, 128)  # tiles of images that cannot be read
THUMB_CACHE_BYTES = 256 << 20  # ~30,000 thumbnails of ~8 kB
DEFAULT_PORT = 7860  # the first port tried when none is given, as Gradio does
PORT_TRIES = 100
MAX_BODY = 4 << 20  # a POST of 500 changes is ~60 kB
ORDERS = ("low", "high", "similar")
DEFAULT_ORDER = "high"  # confident pages first: they go fastest with `a`; `o` turns it round
# Every key the page handles, in the order the page lists them; the page shows this list.
KEYS = (
    ("← ↑ → ↓", "move"),
    ("space", "select / unselect"),
    ("1-9", "give the selected crops the n-th species of the sidebar"),
    ("/", "search all classes"),
    ("a", "accept every crop on the page as shown, next page"),
    ("e", "the crop's sequence gets its majority species"),
    ("x", "not an animal / wrong box"),
    ("u", "undo"),
    ("s", "sort by similarity to this crop"),
    ("o", "lowest / highest confidence first"),
    ("n, p", "next / previous page (also PageDown / PageUp)"),
    ("enter", "whole image with its box (again to close)"),
)
_STATIC = ("grid.html", "grid.js", "grid.css")
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True)
class GridItem:
    """One crop to check."""

    key: str  # unique and stable across restarts: how answers are joined back
    file: str  # image path relative to the source's image folder, '/' separated
    detection: int | None  # index in that image's MegaDetector `detections`; None: the whole image
    bbox: tuple[float, float, float, float] | None  # normalised [x, y, w, h]; None: the whole image
    species: str | None  # what the model says: the group it is shown in
    confidence: float | None


class GridSource(Protocol):
    """What a stage hands the grid. `save` is only ever called under the grid's lock."""

    title: str
    answers_path: Path  # shown on the page
    allow_new_classes: bool  # `/` may give a name that is not a class yet

    def classes(self) -> list[str]: ...  # every class `/` searches
    def items(self) -> list[GridItem]: ...  # in a stable order; read once per reload
    def answers(self) -> dict[str, str]: ...  # {item key: species}, re-read from disk
    def save(self, changes: dict[str, str | None]) -> dict[str, str]: ...  # merged; None removes; returns all
    def crops(self, file: str, items: list[GridItem], size: int) -> list: ...  # PIL images, one per item
    def frame(self, file: str, size: int): ...  # the whole image (PIL), longest side <= size
    def sequence(self, item: GridItem) -> list[str]: ...  # keys of the item's sequence (at least its own)
    def embeddings(self, items: list[GridItem]) -> np.ndarray | None: ...  # (n, D), or None: not available
    # Optional: `stale() -> bool` (the items changed: reload), `close()` (stop background work),
    # `done_word` (the progress line's "N of M verified"), `taxa() -> list[str]` (names above the classes that
    # crops may show, a classifier's rollup: a guess to confirm (`a` keeps it) or refine, never a number key).


class FileGridSource:
    """What every grid source over image files shares: thumbnails and frames cut from the files (grey where one
    cannot be read), and each image's capture time, read once.

    A subclass gives `image_path(file) -> Path` (where an item's file lies; `ImageReadError` for a path that
    must not be read) and sets `margin`, the crop policy's context around a box.
    """

    allow_new_classes = False
    margin: float

    def __init__(self):
        self._times: dict[str, str | None] = {}

    def image_path(self, file: str) -> Path:
        raise NotImplementedError

    def crops(self, file: str, items: list[GridItem], size: int) -> list:
        from PIL import Image

        try:
            path = self.image_path(file)
        except ImageReadError as e:
            log.warning("grid: %s", e)
            return [Image.new("RGB", (size, size), GREY) for _ in items]
        return cut_thumbnails(path, [it.bbox for it in items], size, self.margin)

    def frame(self, file: str, size: int):
        from PIL import Image

        try:
            return frame_image(self.image_path(file), size)
        except ImageReadError as e:
            log.warning("grid: %s", e)
            return Image.new("RGB", (size, size * 3 // 4), GREY)

    def capture_time(self, file: str) -> str | None:
        """The image's EXIF capture time (None without one, or when it cannot be read), read once."""
        if file not in self._times:
            try:
                self._times[file] = read_header(self.image_path(file)).time
            except ImageReadError:
                self._times[file] = None
        return self._times[file]


class GridApp:
    """The grid's logic over a source, without HTTP: views, pages, decisions, thumbnails."""

    def __init__(self, source: GridSource, workers: int | None = None, thumb_size: int = THUMB_SIZE,
                 thumb_cache_bytes: int = THUMB_CACHE_BYTES):
        self.source = source
        workers = workers or max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                 else os.cpu_count() or 2)  # one thumbnail cutter per core
        self.lock = threading.Lock()  # one writer of the answers file; guards answers and version
        self.version = 0  # bumped on every saved change: tabs poll it
        self.thumbs = ThumbCache(source, thumb_size, thumb_cache_bytes, workers)
        self._views: OrderedDict[tuple, list[int]] = OrderedDict()
        self._vectors: dict[str, np.ndarray] = {}  # item key -> (D,) embedding, each computed once
        self._embed_lock = threading.Lock()
        self.reload()
        # The page a fresh tab opens on (all species, where the person stopped) is cut before anyone asks.
        self.page(None, DEFAULT_ORDER, None, -1)

    def reload(self) -> None:
        """Read items and answers again (a new round, or answers changed on disk)."""
        items = self.source.items()
        with self.lock:
            self.items = items
            self.by_key = {it.key: i for i, it in enumerate(items)}
            self.answers = self.source.answers()
            counts = Counter(it.species or "" for it in items)
            # Sidebar: most crops first, so 1-9 reach the commonest species; classes no crop shows come
            # after, while there are number keys left for them.
            self.groups = sorted(counts, key=lambda s: (-counts[s], s))
            spare = [c for c in self.source.classes() if c not in counts]
            self.groups += spare[:max(0, 9 - sum(1 for g in self.groups if g))]
            self.counts = counts
            self._views.clear()
            self._vectors = {}  # a new round may come with a new embedder
            self.version += 1

    # -- reading -------------------------------------------------------------------------

    def state(self) -> dict:
        stale = getattr(self.source, "stale", None)
        if stale is not None and stale():  # e.g. `al next` started a new round under the labelling page
            self.reload()
        with self.lock:
            done = Counter(self.items[i].species or "" for k, i in self.by_key.items() if k in self.answers)
            taxa = set(_taxa(self.source))
            return {
                "title": self.source.title,
                "done_word": getattr(self.source, "done_word", "verified"),
                "answers_path": str(self.source.answers_path),
                "classes": self.source.classes(),
                "allow_new_classes": self.source.allow_new_classes,
                "groups": [{"name": g, "count": self.counts[g], "done": done[g], "taxon": g in taxa}
                           for g in self.groups],
                "total": len(self.items),
                "done": sum(done.values()),
                "version": self.version,
                "wrong_box": WRONG_BOX,
                "keys": [list(k) for k in KEYS],
            }

    def view(self, group: str | None, order: str, ref: str | None = None) -> list[int]:
        """Item indices of a group ('' or None: all) in `order`; cached, since 100,000 items take a while to sort."""
        if order not in ORDERS:
            raise TrapkitError(f"order {order!r} is not one of {', '.join(ORDERS)}")
        group = group or None
        cache_key = (group, order, ref if order == "similar" else None)
        with self.lock:
            found = self._views.get(cache_key)
            items = self.items
            rank = {g: n for n, g in enumerate(self.groups)}
        if found is not None:
            return found
        chosen = [i for i, it in enumerate(items) if group is None or (it.species or "") == group]
        if order == "similar":
            chosen = self._by_similarity(chosen, ref)
        else:
            sign = 1.0 if order == "low" else -1.0
            # All groups: by sidebar order, then confidence; unknown confidence last.
            chosen.sort(key=lambda i: (rank.get(items[i].species or "", 0),
                                       items[i].confidence is None,
                                       sign * (items[i].confidence or 0.0), i))
        with self.lock:
            self._views[cache_key] = chosen
            while len(self._views) > 32:
                self._views.popitem(last=False)
        return chosen

    def _by_similarity(self, chosen: list[int], ref: str | None) -> list[int]:
        if ref not in self.by_key:
            raise TrapkitError("pick a crop first: 'similar' sorts by distance to the crop under the cursor")
        wanted = [self.items[i] for i in chosen]
        ref_item = self.items[self.by_key[ref]]
        vectors = self._embed([ref_item, *wanted])
        if vectors is None:
            raise TrapkitError("no embeddings to compare crops with; start the page with --model (or, for review, "
                               "--features)")
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        distance = 1.0 - unit[1:] @ unit[0]  # cosine distance to the reference crop
        ref_index = self.by_key[ref]
        distance[[j for j, i in enumerate(chosen) if i == ref_index]] = -1.0  # the crop itself first, even among twins
        order = np.argsort(distance, kind="stable")
        return [chosen[j] for j in order]

    def _embed(self, items: list[GridItem]) -> np.ndarray | None:
        """(n, D) float32 embeddings of `items`, each computed once per server."""
        with self._embed_lock:  # one embedding job at a time: the model is the slow part
            todo = [it for it in items if it.key not in self._vectors]
            if todo:
                got = self.source.embeddings(todo)
                if got is None:
                    return None
                self._vectors.update(zip((it.key for it in todo), np.asarray(got, np.float32)))
            return np.stack([self._vectors[it.key] for it in items])

    def page(self, group: str | None, order: str = DEFAULT_ORDER, ref: str | None = None, page: int = 0,
             size: int = PAGE_SIZE) -> dict:
        """One page of a view. `page=-1`: the first page holding an unanswered item (where the person stopped)."""
        size = min(max(int(size), 1), MAX_PAGE_SIZE)
        indices = self.view(group, order, ref)
        pages = max(1, -(-len(indices) // size))
        with self.lock:
            answers = dict(self.answers)
            items = self.items
        if page < 0:
            first = next((n for n, i in enumerate(indices) if items[i].key not in answers), 0)
            page = first // size
        page = min(page, pages - 1)
        shown = [items[i] for i in indices[page * size:(page + 1) * size]]
        self.thumbs.warm(shown)
        # The next page is cut while the person looks at this one.
        self.thumbs.warm([items[i] for i in indices[(page + 1) * size:(page + 2) * size]])
        return {
            "group": group or "", "order": order, "ref": ref, "page": page, "pages": pages, "size": size,
            "total": len(indices), "version": self.version,
            "items": [self._item_json(it, answers) for it in shown],
        }

    @staticmethod
    def _item_json(it: GridItem, answers: dict[str, str]) -> dict:
        return {"key": it.key, "file": it.file, "detection": it.detection, "bbox": it.bbox,
                "species": it.species, "conf": it.confidence, "answer": answers.get(it.key)}

    def answers_of(self, keys: list[str]) -> dict[str, str | None]:
        with self.lock:
            return {k: self.answers.get(k) for k in keys}

    # -- deciding ------------------------------------------------------------------------

    def decide(self, changes: list[dict]) -> dict:
        """Apply and save changes ({key, species: str | None, expect?}) at once.

        Returns {"applied": [{key, before, after}], "skipped": [keys whose answer was not `expect`], counts}.
        """
        wanted: dict[str, tuple[str | None, object]] = {}
        classes = set(self.source.classes()) | set(_taxa(self.source)) | {WRONG_BOX}
        for c in changes:
            if not isinstance(c, dict) or not isinstance(c.get("key"), str):
                raise TrapkitError("each change needs a 'key'")
            key, species = c["key"], c.get("species")
            if key not in self.by_key:
                raise TrapkitError(f"no crop {key!r} on this page; reload the page")
            if species is not None:
                if not isinstance(species, str):
                    raise TrapkitError(f"species for {key!r} must be text")
                species = clean_species(species, key) if species.strip() else None
            if species is not None and species not in classes and not self.source.allow_new_classes:
                raise TrapkitError(f"unknown class {species!r}; pick one of the classes (press / to search them)")
            wanted[key] = (species, c["expect"] if "expect" in c else _ANY)
        with self.lock:
            # Merge with what is on disk first: another process (or an editor) may have written since.
            self.answers = self.source.answers()
            applied, skipped, save = [], [], {}
            for key, (species, expect) in wanted.items():
                before = self.answers.get(key)
                if expect is not _ANY and before != expect:
                    skipped.append(key)
                    continue
                if before != species:
                    save[key] = species
                applied.append({"key": key, "before": before, "after": species})
            if save:
                self.answers = self.source.save(save)
                self.version += 1
            version = self.version
        if save:
            log.debug("saved %d answers", len(save))
        return {"applied": applied, "skipped": skipped, "version": version}

    def sequence(self, key: str) -> dict:
        """The crop's whole sequence gets its majority species (answers count, then the model's); answered
        crops keep their answers. Ties go to the crop's own species."""
        if key not in self.by_key:
            raise TrapkitError(f"no crop {key!r}; reload the page")
        item = self.items[self.by_key[key]]
        keys = [k for k in self.source.sequence(item) if k in self.by_key]
        with self.lock:
            answers = dict(self.answers)
        shown = {k: answers.get(k) or self.items[self.by_key[k]].species for k in keys}
        votes = Counter(s for s in shown.values() if s and s != WRONG_BOX)
        if not votes:
            return {"applied": [], "skipped": [], "version": self.version, "species": None, "sequence": len(keys)}
        top = max(votes.values())
        own = shown.get(key)
        majority = own if votes.get(own) == top else min(s for s, n in votes.items() if n == top)
        result = self.decide([{"key": k, "species": majority, "expect": None} for k in keys if answers.get(k) is None])
        result.update(species=majority, sequence=len(keys))
        return result

    # -- pixels --------------------------------------------------------------------------

    def thumb(self, key: str) -> bytes:
        if key not in self.by_key:
            raise KeyError(key)
        return self.thumbs.get(self.items[self.by_key[key]])

    def frame(self, key: str) -> bytes:
        if key not in self.by_key:
            raise KeyError(key)
        return _jpeg(self.source.frame(self.items[self.by_key[key]].file, FRAME_SIZE), quality=88)

    def close(self) -> None:
        self.thumbs.close()


_ANY = object()  # no `expect`: the change applies whatever the answer is now


def _taxa(source) -> list[str]:
    taxa = getattr(source, "taxa", None)
    return taxa() if taxa is not None else []


def cut_thumbnails(path: Path, boxes: list, size: int, margin: float) -> list:
    """(size, size) PIL thumbnails of one image: per normalised [x, y, w, h] box, the square crop of the crop
    policy (trapkit.prepare: one region decode for all boxes); per None, the whole image padded to a square.
    An image that cannot be read gives grey tiles (and a warning in the log)."""
    from PIL import Image, ImageOps

    from trapkit.prepare import Preprocessing, prepare_image

    out = [None] * len(boxes)
    try:
        boxed = [n for n, b in enumerate(boxes) if b is not None]
        if boxed:
            prep = Preprocessing(input_size=size, margin=margin)
            crops = prepare_image(path, [boxes[n] for n in boxed], prep).crops  # (k, size, size, 3) uint8
            for n, crop in zip(boxed, crops):
                out[n] = Image.fromarray(crop)
        if len(boxed) < len(boxes):
            img, _ = open_image(path, min_size=(size, size))
            whole = ImageOps.pad(img, (size, size), Image.BILINEAR, color=GREY)
            out = [whole if o is None else o for o in out]
    except ImageReadError as e:
        log.warning("grid: %s", e)
        return [Image.new("RGB", (size, size), GREY) for _ in boxes]
    return out


def frame_image(path: Path, size: int):
    """The whole image upright, longest side <= size; a grey frame when it cannot be read."""
    from PIL import Image

    try:
        img, _ = open_image(path, min_size=(size, size))
    except ImageReadError as e:
        log.warning("grid: %s", e)
        return Image.new("RGB", (size, size * 3 // 4), GREY)
    img.thumbnail((size, size), Image.BILINEAR)
    return img


def _jpeg(img, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class ThumbCache:
    """Crop thumbnails as JPEG bytes: cut per image in worker threads, kept up to `max_bytes` (least recent out)."""

    def __init__(self, source: GridSource, size: int, max_bytes: int, workers: int):
        self.source = source
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self.cache: OrderedDict[str, bytes] = OrderedDict()
        self.pending: dict[str, Future] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="thumbs")

    def warm(self, items: list[GridItem]) -> list[Future]:
        """Start cutting what is neither cached nor under way, one job per image (one decode for its crops)."""
        by_file: dict[str, list[GridItem]] = {}
        futures = []
        with self.lock:
            for it in items:
                if it.key in self.cache:
                    continue
                if it.key in self.pending:
                    futures.append(self.pending[it.key])
                    continue
                by_file.setdefault(it.file, []).append(it)
            for file, group in by_file.items():
                future = self.pool.submit(self._cut, file, group)
                for it in group:
                    self.pending[it.key] = future
                futures.append(future)
        return futures

    def get(self, item: GridItem) -> bytes:
        with self.lock:
            found = self.cache.get(item.key)
            if found is not None:
                self.cache.move_to_end(item.key)
                return found
        for future in self.warm([item]):
            future.result()
        with self.lock:
            found = self.cache.get(item.key)
        if found is None:  # cut and already pushed out of a tiny cache: cut it again here
            found = self._encode([item])[item.key]
        return found

    def _cut(self, file: str, items: list[GridItem]) -> None:
        try:
            done = self._encode(items)
        finally:
            with self.lock:
                for it in items:
                    self.pending.pop(it.key, None)
        with self.lock:
            for key, data in done.items():
                if key not in self.cache:
                    self.cache[key] = data
                    self.bytes += len(data)
            while self.bytes > self.max_bytes and len(self.cache) > 1:
                _, old = self.cache.popitem(last=False)
                self.bytes -= len(old)

    def _encode(self, items: list[GridItem]) -> dict[str, bytes]:
        images = self.source.crops(items[0].file, items, self.size)
        return {it.key: _jpeg(img) for it, img in zip(items, images)}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# -- HTTP ------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a page's 100 thumbnails reuse a few connections
    # Headers and body are two writes; on a kept-alive connection Nagle's algorithm holds the body until the
    # browser's delayed ACK of the headers, about 40 ms per thumbnail (most of a first page's second).
    disable_nagle_algorithm = True
    server: GridHTTPServer

    def log_message(self, fmt, *args):  # noqa: D401 - http.server's hook; requests are debug chatter
        log.debug("%s %s", self.address_string(), fmt % args)

    # Routing --------------------------------------------------------------------------------

    def do_GET(self):
        if not self._host_ok():
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        app = self.server.app
        try:
            if url.path in ("/", "/index.html"):
                self._static("grid.html")
            elif url.path.startswith("/static/") and url.path[8:] in _STATIC:
                self._static(url.path[8:])
            elif url.path == "/api/state":
                self._json(app.state())
            elif url.path == "/api/page":
                self._json(app.page(query.get("group") or None, query.get("order", DEFAULT_ORDER),
                                    query.get("ref") or None, int(query.get("page", 0)),
                                    int(query.get("size", PAGE_SIZE))))
            elif url.path == "/api/answers":
                keys = [k for k in query.get("keys", "").split("\n") if k]
                self._json({"answers": app.answers_of(keys), "version": app.version})
            elif url.path == "/api/version":
                self._json({"version": app.version})
            elif url.path in ("/thumb", "/api/frame"):
                key = query.get("key", "")
                try:
                    data = app.thumb(key) if url.path == "/thumb" else app.frame(key)
                except KeyError:
                    return self._error(HTTPStatus.NOT_FOUND, "no such crop")
                # Thumbnails never change while the server runs.
                self._send(HTTPStatus.OK, data, "image/jpeg", cache="private, max-age=86400")
            elif url.path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "text/plain")
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")
        except TrapkitError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except ValueError as e:
            self._error(HTTPStatus.BAD_REQUEST, f"bad request ({e})")
        except Exception:  # noqa: BLE001 - a broken request must not take the server down; logged in full
            log.exception("grid: %s failed", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the server's log")

    def do_POST(self):
        if not self._host_ok():
            return
        # JSON only, and from this page: a form on another site can POST text/plain but not JSON
        # without a CORS preflight, which this server never grants.
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON")
        origin = self.headers.get("Origin")
        if origin and urlsplit(origin).netloc.lower() != self.headers.get("Host", "").lower():
            return self._error(HTTPStatus.FORBIDDEN, "cross-origin requests are refused")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too many changes at once")
        app = self.server.app
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise TrapkitError("send a JSON object")
            path = urlsplit(self.path).path
            if path == "/api/decide":
                changes = body.get("changes")
                if not isinstance(changes, list):
                    raise TrapkitError("send {'changes': [...]}")
                self._json(app.decide(changes))
            elif path == "/api/sequence":
                self._json(app.sequence(str(body.get("key", ""))))
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")
        except json.JSONDecodeError:
            self._error(HTTPStatus.BAD_REQUEST, "the body is not JSON")
        except TrapkitError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except Exception:  # noqa: BLE001 - as in do_GET
            log.exception("grid: %s failed", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the server's log")

    # Replies --------------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        if host_allowed(self.headers.get("Host"), self.server.allowed_hosts):
            return True
        self._error(HTTPStatus.FORBIDDEN, "unknown Host header; open the page through 127.0.0.1 or localhost")
        return False

    def _static(self, name: str) -> None:
        data = resources.files("trapkit").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, data, _CONTENT_TYPES[Path(name).suffix], cache="no-cache")

    def _json(self, obj) -> None:
        self._send(HTTPStatus.OK, json.dumps(obj).encode(), "application/json", cache="no-store")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json", cache="no-store")

    def _send(self, status: HTTPStatus, data: bytes, content_type: str, cache: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if content_type.startswith("text/html"):
            # Scripts and images only from this server: the page cannot leak anything elsewhere.
            self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                             "frame-ancestors 'none'")
        if cache:
            self.send_header("Cache-Control", cache)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the tab went to another page meanwhile
            pass


class GridHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a second server on a busy port must fail, not share it

    def __init__(self, address, app: GridApp, allowed: list[str], family: int):
        self.address_family = family
        self.app = app
        self.allowed_hosts = allowed
        super().__init__(address, _Handler)


class GridServer:
    """A running grid: `.url`; `.close()` stops it (and the source's background work, if it has a `close`)."""

    def __init__(self, httpd: GridHTTPServer, url: str):
        self.httpd = httpd
        self.url = url
        self.app = httpd.app
        self.thread = threading.Thread(target=httpd.serve_forever, name="grid-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.app.close()
        closer = getattr(self.app.source, "close", None)
        if closer is not None:
            closer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def start(app: GridApp, host: str = "127.0.0.1", port: int | None = None) -> GridServer:
    """Listen on host:port (None: the first free port from 7860) in a background thread."""
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise TrapkitError(f"cannot listen on host {host!r} ({e.strerror}); check --host (127.0.0.1 for this "
                           "machine only, 0.0.0.0 for every network)") from None
    family, _, _, _, address = infos[0]
    ports = [port] if port else range(DEFAULT_PORT, DEFAULT_PORT + PORT_TRIES)
    last = None
    for p in ports:
        try:
            httpd = GridHTTPServer((address[0], p), app, allowed_host_names(host), family)
            break
        except OSError as e:
            last = e
            if e.errno != errno.EADDRINUSE:
                raise TrapkitError(f"cannot listen on host {host!r} ({e.strerror or e}); check --host "
                                   "(127.0.0.1 for this machine only, 0.0.0.0 for every network)") from None
    else:
        if port:
            raise TrapkitError(f"port {port} is busy ({last.strerror}); pick another with --port, "
                               "or leave --port out to take a free one") from None
        raise TrapkitError(f"no free port from {DEFAULT_PORT} to {DEFAULT_PORT + PORT_TRIES - 1}; "
                           "pick one with --port") from None
    bound = httpd.server_address[1]
    shown = "127.0.0.1" if host in WILDCARD_HOSTS else host
    url = f"http://[{shown}]:{bound}/" if ":" in shown else f"http://{shown}:{bound}/"
    return GridServer(httpd, url)


def serve(app: GridApp, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Serve until Ctrl+C."""
    try:
        server = start(app, host, port)
    except BaseException:
        app.close()
        closer = getattr(app.source, "close", None)
        if closer is not None:
            closer()
        raise
    log.info("%s: open %s (Ctrl+C to stop)", app.source.title, server.url)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # A service manager's SIGTERM stops the page as Ctrl+C does (the verified copy is written last).
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.thread.join()
    except KeyboardInterrupt:  # the way to stop a page: every answer is already on disk
        log.info("stopped; answers are in %s", app.source.answers_path)
    finally:
        server.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
