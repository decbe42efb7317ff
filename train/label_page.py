"""The labelling page: answer an active-learning round's label request in a browser.

It shows the images the current round asks about in a grid with the model's
guess, and one image at a time large with a species box (pick a class or
type a name). Every answer is saved at once through
`trapkit.train.labels.save_answers` into the run's inbox as an answers CSV,
the same file `trapkit al next` ingests, so a closed tab or a killed server
loses nothing, and reopening the page starts at the first unanswered image.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import gradio as gr
from PIL import Image

from trapkit.errors import TrapkitError
from trapkit.images import open_image, safe_join
from trapkit.web import BLOCKS_OPTIONS, launch
from trapkit.train import labels as label_api
from trapkit.train.run import Run

log = logging.getLogger(__name__)

THUMB_SIZE = 256
VIEW_SIZE = 1024
_MISSING = (THUMB_SIZE, THUMB_SIZE)


class LabelPage:
    """The page's logic, without Gradio: what to show for a run and how an answer is saved."""

    def __init__(self, run_dir: str | Path, allow_new_classes: bool = False):
        self.run_dir = Path(run_dir)
        run = Run(self.run_dir)
        run.require()
        self.allow_new_classes = allow_new_classes
        self.root = label_api.image_root(self.run_dir)
        self.classes = label_api.class_names(self.run_dir)
        self._thumbs = functools.lru_cache(maxsize=2048)(self._load_thumb)
        self.items()  # a run without a request is an error now, not on the first page view

    def items(self) -> list[label_api.RequestItem]:
        items = label_api.current_request(self.run_dir)
        if not items:
            raise TrapkitError(f"the current round of {self.run_dir} requests no images; run 'trapkit al next'")
        return items

    def image(self, path: str, size: int = VIEW_SIZE) -> Image.Image:
        """The image upright, longest side <= size; a grey tile (and a logged warning) when it cannot be read."""
        try:
            img, _ = open_image(safe_join(self.root, path), min_size=(size, size))
        except TrapkitError as e:
            log.warning("labelling page: %s", e)
            return Image.new("RGB", _MISSING, (128, 128, 128))
        img.thumbnail((size, size), Image.BILINEAR)
        return img

    def _load_thumb(self, path: str) -> Image.Image:
        return self.image(path, THUMB_SIZE)

    def thumb(self, path: str) -> Image.Image:
        return self._thumbs(path)

    def save(self, path: str, species: str) -> Path:
        """Save one answer ('' removes it). Unknown class names are refused unless the page allows new classes."""
        if not path:
            raise TrapkitError("no image selected; click an image in the grid first")
        return label_api.save_answers(self.run_dir, {path: species or ""},
                                      allow_new_classes=self.allow_new_classes)

    def progress(self, items) -> str:
        done = sum(1 for it in items if it.answered)
        answers = label_api.page_answers_path(self.run_dir)
        round_n = Run(self.run_dir).load_state().round  # read each time: `al next` may have moved on
        return (f"### Round {round_n}: {done} of {len(items)} answered\n"
                f"Answers are saved as you go to `{answers}`; run `trapkit al next {self.run_dir}"
                + (" --allow-new-classes" if self.allow_new_classes else "") + "` when done.")


def caption(item: label_api.RequestItem) -> str:
    guess = f"guess {item.guess} {item.confidence:.2f}" if item.guess and item.confidence is not None else "no guess"
    return f"✓ {item.answered} ({guess})" if item.answered else guess


def next_index(items, after: int = -1) -> int:
    """The first unanswered item after `after` (wrapping), or `after` itself when all are answered."""
    n = len(items)
    for step in range(1, n + 1):
        i = (after + step) % n
        if not items[i].answered:
            return i
    return max(after, 0)


def shown_as_error(fn):
    """Turn a TrapkitError raised by a page callback into a gr.Error: its message shows on the page."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrapkitError as e:
            raise gr.Error(str(e)) from None
    return wrapper


def build_label_page(run_dir: str | Path, allow_new_classes: bool = False):
    """The labelling page for RUN's current round as a gr.Blocks (not launched).

    `allow_new_classes`: accept typed names that are not classes yet (`al next` then needs the same flag).
    """
    page = LabelPage(run_dir, allow_new_classes)

    def view(i: int, message: str = ""):
        # Everything the page shows, with item i in the large view.
        items = page.items()
        i = min(max(i, 0), len(items) - 1)
        it = items[i]
        species_value = it.answered or (it.guess if it.guess in page.classes else None)
        return (
            page.progress(items),
            gr.Gallery([(page.thumb(x.path), caption(x)) for x in items], selected_index=i),
            it.path,
            page.image(it.path),
            f"**{it.path}**  \n{caption(it)}",
            species_value,
            message,
        )

    @shown_as_error
    def on_load():
        return view(next_index(page.items()))

    @shown_as_error
    def on_select(evt: gr.SelectData):
        return view(evt.index or 0)

    @shown_as_error
    def on_save(path: str, species: str):
        page.save(path, species)
        items = page.items()
        here = next((i for i, it in enumerate(items) if it.path == path), -1)
        saved = f"Saved {path}: {species}" if species else f"Removed the answer for {path}"
        return view(next_index(items, here), saved)

    @shown_as_error
    def on_step(path: str, step: int):
        items = page.items()
        here = next((i for i, it in enumerate(items) if it.path == path), 0)
        return view((here + step) % len(items))

    with gr.Blocks(title=f"trapkit labels: {page.run_dir.name}", **BLOCKS_OPTIONS) as app:
        progress = gr.Markdown(elem_id="progress")
        # JPEG: every save re-sends the grid, and Gradio's default WebP encodes ~25x slower.
        gallery = gr.Gallery(label="Requested images (click one to answer it)", columns=6, height=420,
                             allow_preview=False, format="jpeg", elem_id="grid")
        with gr.Row():
            with gr.Column(scale=3):
                image = gr.Image(label="Image", type="pil", format="jpeg", interactive=False, height=440,
                                 elem_id="current-image")
            with gr.Column(scale=2):
                path = gr.Textbox(label="Image path", interactive=False, elem_id="current-path")
                about = gr.Markdown()
                species = gr.Dropdown(page.classes, label="Species", allow_custom_value=True, elem_id="species",
                                      info="Pick a class or type a name"
                                      + (" (new names become new classes)" if page.allow_new_classes
                                         else " (new names need 'trapkit label --allow-new-classes')"))
                save = gr.Button("Save and next", variant="primary", elem_id="save")
                with gr.Row():
                    prev_btn = gr.Button("Previous")
                    next_btn = gr.Button("Next")
                status = gr.Markdown(elem_id="status")
        shown = [progress, gallery, path, image, about, species, status]
        app.load(on_load, None, shown, api_name="refresh")
        gallery.select(on_select, None, shown, api_visibility="private")
        # One writer at a time: each save is a read-modify-write of the answers file.
        save.click(on_save, [path, species], shown, api_name="save", concurrency_limit=1,
                   concurrency_id="answers")
        prev_btn.click(lambda p: on_step(p, -1), [path], shown, api_visibility="private")
        next_btn.click(lambda p: on_step(p, 1), [path], shown, api_visibility="private")
    app.queue(max_size=64)
    return app


def serve_label_page(run_dir: str | Path, allow_new_classes: bool = False, host: str = "127.0.0.1",
                     port: int | None = None, block: bool = True):
    """Build and serve the labelling page until interrupted (or return (app, url) when `block=False`)."""
    app = build_label_page(run_dir, allow_new_classes)
    log.info("labelling page for %s", run_dir)
    url = launch(app, host, port, block=block)
    return app, url
