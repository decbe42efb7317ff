"""`trapkit review` on a real classify result: keys pressed in a real Chromium, answers checked row by row.

The browser tests are `slow` (CI runs them); the grid's logic and the bad-input
errors are tested without a browser.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request
import pytest
from classify_helpers import megadetector_validate
from review_helpers import browser, make_review_case, press, read_rows, row_key

from trapkit import grid
from trapkit.app.cli import main
from trapkit.errors import TrapkitError
from trapkit.answers import WRONG_BOX
from trapkit.serve.review import open_review


@pytest.fixture(scope="module")
def case(tiny_onnx_path, tmp_path_factory):
    """A classify result over 8 small photos (read-only: answers go to each test's tmp_path)."""
    return make_review_case(tmp_path_factory.mktemp("review"), tiny_onnx_path)


def _app(case, answers, **kw):
    return open_review(case["results"], case["images"], answers, **kw)


def _first_page(app, size=100):
    return [it["key"] for it in app.page(None, "high", None, 0, size)["items"]]


# -- the grid's logic, without a browser ------------------------------------------------------------


def test_items_are_the_classified_detections_grouped_by_species(case, tmp_path):
    doc = json.loads(case["results"].read_text())
    app = _app(case, tmp_path / "answers.csv")
    try:
        classified = [(im["file"], j) for im in doc["images"] for j, d in enumerate(im["detections"] or ())
                      if d.get("classifications")]
        assert sorted((it.file, it.detection) for it in app.items) == sorted(classified)
        state = app.state()
        assert sum(g["count"] for g in state["groups"]) == len(classified) == state["total"]
        counts = [g["count"] for g in state["groups"]]
        assert counts == sorted(counts, reverse=True)  # the commonest species gets key 1
        high = app.view(None, "high")
        low = app.view(None, "low")
        for view, sign in ((high, -1), (low, 1)):
            ranks = [(state["groups"].index(next(g for g in state["groups"] if g["name"] == app.items[i].species)),
                      sign * app.items[i].confidence) for i in view]
            assert ranks == sorted(ranks)
    finally:
        app.close()


def test_decisions_undo_by_expectation_and_the_sequence_majority(case, tmp_path):
    answers = tmp_path / "answers.csv"
    app = _app(case, answers)
    try:
        keys = [it.key for it in app.items]
        burst = [k for k in keys if k.startswith("cam_b/burst_")]
        classes = app.source.classes()
        r = app.decide([{"key": keys[0], "species": classes[1]}, {"key": keys[1], "species": WRONG_BOX}])
        assert [c["after"] for c in r["applied"]] == [classes[1], WRONG_BOX]
        assert read_rows(answers) == {row_key(keys[0]): classes[1], row_key(keys[1]): WRONG_BOX}
        with pytest.raises(TrapkitError, match="unknown class 'zebra'"):
            app.decide([{"key": keys[2], "species": "zebra"}])
        # Undo is a change that expects what it undoes: a newer answer is kept.
        app.decide([{"key": keys[0], "species": classes[2]}])
        r = app.decide([{"key": keys[0], "species": None, "expect": classes[1]}])
        assert r["skipped"] == [keys[0]] and read_rows(answers)[row_key(keys[0])] == classes[2]
        r = app.decide([{"key": keys[1], "species": None, "expect": WRONG_BOX}])
        assert r["applied"] == [{"key": keys[1], "before": WRONG_BOX, "after": None}]
        assert row_key(keys[1]) not in read_rows(answers)

        # The three burst photos (10 s apart) are one sequence; 'later.jpg' (an hour on) is not in it.
        assert sorted(app.source.sequence(app.items[app.by_key[burst[0]]])) == sorted(burst)
        assert len(burst) == 6  # two crops in each of three photos
        app.decide([{"key": k, "species": classes[3]} for k in burst[:4]])
        r = app.sequence(burst[4])  # 4 of 6 votes: the unanswered two follow
        assert r["species"] == classes[3] and {c["key"] for c in r["applied"]} == set(burst[4:])
        rows = read_rows(answers)
        assert all(rows[row_key(k)] == classes[3] for k in burst)
        assert not any(k[0] == "later.jpg" for k in rows)
    finally:
        app.close()


@pytest.mark.parametrize("stored", [False, True], ids=["model", "features-table"])
def test_similar_sorts_by_the_models_embedding(case, tmp_path, tiny_onnx_path, stored):
    given = {"features": case["features"]} if stored else {"model": tiny_onnx_path}
    app = _app(case, tmp_path / "answers.csv", **given)
    try:
        ref = app.items[3].key
        order = app.view(None, "similar", ref)
        assert order[0] == 3 and sorted(order) == list(range(len(app.items)))
        # The same animal in the other copies of the photo comes next, before any other crop.
        twins = {f"cam_b/{name}#0" for name in ("burst_1.jpg", "burst_2.jpg", "burst_3.jpg", "later.jpg")}
        twins.add("station A/domestic_cattle.jpg#0")
        order = app.view(None, "similar", "cam_b/burst_2.jpg#0")
        assert app.items[order[0]].key == "cam_b/burst_2.jpg#0"
        assert {app.items[i].key for i in order[:5]} == twins
    finally:
        app.close()
    plain = _app(case, tmp_path / "answers.csv")
    try:
        with pytest.raises(TrapkitError, match="--model"):
            plain.view(None, "similar", plain.items[0].key)
    finally:
        plain.close()


def test_verified_copy_passes_megadetectors_validator(case, tmp_path):
    answers, out = tmp_path / "answers.csv", tmp_path / "verified.json"
    app = _app(case, answers, verified=out)
    server = grid.start(app)
    try:
        keys = [it.key for it in app.items]
        app.decide([{"key": keys[0], "species": "ocelot"}, {"key": keys[1], "species": WRONG_BOX},
                    {"key": keys[2], "species": app.items[2].species}])
    finally:
        server.close()  # the last write happens on close
    doc = json.loads(out.read_text())
    megadetector_validate(out)
    assert doc["info"]["review"]["verified_detections"] == 2 and doc["info"]["review"]["wrong_boxes"] == 1
    cats = {v: k for k, v in doc["classification_categories"].items()}
    by_file = {im["file"]: im for im in doc["images"]}

    def det(key):
        file, _, j = key.rpartition("#")
        return by_file[file]["detections"][int(j)]

    assert det(keys[0])["classifications"] == [[cats["ocelot"], 1.0]]
    assert "classifications" not in det(keys[1]) and det(keys[1])["wrong_box"] is True
    assert det(keys[2])["classifications"] == [[cats[app.items[2].species], 1.0]]
    original = {im["file"]: im for im in json.loads(case["results"].read_text())["images"]}

    def model_said(key):
        file, _, j = key.rpartition("#")
        return original[file]["detections"][int(j)]["classifications"]

    assert det(keys[0])["classifications_before_review"] == model_said(keys[0])
    assert det(keys[3])["classifications"] == model_said(keys[3])
    assert "classifications_before_review" not in det(keys[3])


def _get(url: str, host: str | None = None, data: bytes | None = None, content_type: str | None = None,
         origin: str | None = None) -> int:
    req = urllib.request.Request(url, data=data)
    if host:
        req.add_header("Host", host)
    if content_type:
        req.add_header("Content-Type", content_type)
    if origin:
        req.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_only_this_machine_and_this_page_may_talk_to_the_server(case, tmp_path):
    answers = tmp_path / "answers.csv"
    with grid.start(_app(case, answers)) as server:
        url = server.url
        assert _get(url + "api/state") == 200
        assert _get(url + "api/state", host=f"localhost:{url.rsplit(':', 1)[1]}") == 200
        assert _get(url + "api/state", host="attacker.example:80") == 403  # DNS rebinding
        change = json.dumps({"changes": [{"key": server.app.items[0].key, "species": WRONG_BOX}]}).encode()
        assert _get(url + "api/decide", data=change, content_type="text/plain") == 415  # a plain form post
        assert _get(url + "api/decide", data=change, content_type="application/json",
                    origin="http://attacker.example") == 403
        assert not answers.exists()
        assert _get(url + "api/decide", data=change, content_type="application/json") == 200
        assert _get(url + "thumb?key=nothing%230") == 404
    assert list(read_rows(answers).values()) == [WRONG_BOX]


# -- bad input: one line each -------------------------------------------------------------------------


def _review(capsys, *argv) -> str:
    assert main(["review", *map(str, argv)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_bad_input_is_one_line(case, tmp_path, capsys, samples_dir):
    images, results, answers = case["images"], case["results"], tmp_path / "answers.csv"
    assert "does not exist" in _review(capsys, tmp_path / "none.json", "--images", images, "--answers", answers)
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert "is not MegaDetector batch output" in _review(capsys, coco, "--images", images, "--answers", answers)
    err = _review(capsys, samples_dir / "md_v5a_detections.json", "--images", samples_dir, "--answers", answers)
    assert "has no classifications; run 'trapkit classify'" in err
    assert "is not a folder" in _review(capsys, results, "--images", tmp_path / "nope", "--answers", answers)
    assert "--images is probably the wrong folder" in _review(capsys, results, "--images", tmp_path,
                                                               "--answers", answers)
    assert "does not exist; create it first" in _review(capsys, results, "--images", images,
                                                         "--answers", tmp_path / "no" / "a.csv")
    assert "is a folder; give a CSV file name" in _review(capsys, results, "--images", images, "--answers", tmp_path)
    (tmp_path / "a_file").write_text("")
    assert "a_file is a file, not a folder" in _review(capsys, results, "--images", images,
                                                      "--answers", tmp_path / "a_file" / "answers.csv")
    if os.geteuid() != 0:  # root may write a read-only file, so for root it is no error
        locked = tmp_path / "locked.csv"
        locked.write_text("File,RelativePath,Detection,Species\r\n")
        locked.chmod(0o444)
        assert "the file is read-only" in _review(capsys, results, "--images", images, "--answers", locked)
    assert "features table" in _review(capsys, results, "--images", images, "--answers", answers,
                                       "--features", tmp_path / "none.parquet")
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("name,value\na,1\n")
    assert "is not an answers CSV" in _review(capsys, results, "--images", images, "--answers", foreign)
    assert "is RESULTS itself" in _review(capsys, results, "--images", images, "--answers", answers,
                                          "--write-verified", results)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = _review(capsys, results, "--images", images, "--answers", answers, "--port", port)
    assert f"port {port} is busy" in err
    assert "is not a port number" in _review(capsys, results, "--images", images, "--answers", answers,
                                             "--port", 70000)
    assert not answers.exists()


# -- in a real browser ------------------------------------------------------------------------------


def _tiles(page) -> list[tuple[str, str]]:
    """(class, caption species) of each tile on screen."""
    return page.eval_on_selector_all("#grid .tile",
                                     "ts => ts.map(t => [t.className, t.querySelector('.sp').textContent])")


@pytest.mark.slow
def test_keys_save_answers_row_by_row_undo_and_resume_after_a_restart(case, tmp_path):
    answers = tmp_path / "answers.csv"
    app = _app(case, answers)
    server = grid.start(app)
    try:
        keys = _first_page(app)
        species = {it.key: it.species for it in app.items}
        groups = [g["name"] for g in app.state()["groups"]]
        with browser() as (new_page, left_machine):
            page = new_page(server.url)
            expected = {}
            # Each documented key shows on the page.
            legend = page.inner_text("#keys")
            for key, _ in grid.KEYS:
                assert key in legend
            # space selects two crops; 2 gives both the sidebar's second species.
            press(page, "ArrowRight", "Space", "ArrowRight", "Space", "2")
            expected.update({row_key(keys[1]): groups[1], row_key(keys[2]): groups[1]})
            assert read_rows(answers) == expected
            # x: the crop under the cursor is not an animal; 1 with no selection: the cursor's crop.
            press(page, "ArrowRight", "x")
            expected[row_key(keys[3])] = WRONG_BOX
            press(page, "1")  # the cursor moved on to keys[4]
            expected[row_key(keys[4])] = groups[0]
            assert read_rows(answers) == expected
            # u undoes the last decision, then the one before.
            press(page, "u")
            del expected[row_key(keys[4])]
            assert read_rows(answers) == expected
            press(page, "u")
            del expected[row_key(keys[3])]
            assert read_rows(answers) == expected
            # / searches every class: pick one by typing.
            press(page, "ArrowLeft", "ArrowLeft", "ArrowLeft")  # undo left the cursor on keys[3]
            press(page, "/")
            page.keyboard.type("ocel")
            press(page, "Enter")
            expected[row_key(keys[0])] = "ocelot"
            assert read_rows(answers) == expected
            tiles = _tiles(page)
            assert "changed" in tiles[0][0] or "answered" in tiles[0][0]
            assert tiles[0][1] == "ocelot"
            # a accepts the page as shown: the others get the model's species, answers stay.
            press(page, "a")
            for k in keys:
                expected.setdefault(row_key(k), species[k])
            assert read_rows(answers) == expected
            assert left_machine == []
    finally:
        server.close()

    # A new server on the same file: the page shows every saved answer.
    app = _app(case, answers)
    server = grid.start(app)
    try:
        with browser() as (new_page, left_machine):
            page = new_page(server.url)
            shown = dict(zip(keys, (sp for _, sp in _tiles(page))))
            assert {row_key(k): shown[k] for k in keys} == expected
            assert "verified" in page.inner_text("#progress")
            assert page.inner_text("#progress").startswith(f"{len(keys)} of {len(keys)}")
            assert left_machine == []
    finally:
        server.close()


@pytest.mark.slow
def test_resume_at_the_first_page_with_work_left_and_two_tabs(case, tmp_path):
    answers = tmp_path / "answers.csv"
    app = _app(case, answers)
    server = grid.start(app)
    size = 3
    try:
        pages = [_first_page_n(app, n, size) for n in range(app.page(None, "high", None, 0, size)["pages"])]
        with browser() as (new_page, left_machine):
            page = new_page(server.url + f"?size={size}")
            press(page, "a")  # page 1 accepted, now on page 2
            assert page.inner_text("#page-of").startswith("page 2 of")
            assert set(read_rows(answers)) == {row_key(k) for k in pages[0]}
        server.close()
        server = grid.start(_app(case, answers))
        with browser() as (new_page, left_machine):
            # Reopened without any position: the first page with a crop left to check.
            a = new_page(server.url + f"?size={size}")
            assert a.inner_text("#page-of").startswith("page 2 of")
            b = new_page(server.url + f"?size={size}")
            # Tab A answers a crop; tab B, still showing it unanswered, accepts its page: A's answer stays.
            press(a, "ArrowRight", "x")
            press(b, "a")
            rows = read_rows(answers)
            assert rows[row_key(pages[1][1])] == WRONG_BOX
            assert all(rows[row_key(k)] == server.app.items[server.app.by_key[k]].species
                       for k in pages[1] if k != pages[1][1])
            assert "answered in another tab" in b.inner_text("#status")
            # Tab B's work shows in tab A once A looks again (it polls; a focus asks at once).
            a.evaluate("window.dispatchEvent(new Event('focus'))")
            a.wait_for_function(f"document.querySelectorAll('#grid .tile.answered, #grid .tile.changed, "
                                f"#grid .tile.wrong').length === {len(pages[1])}")
            assert left_machine == []
    finally:
        server.close()


def _first_page_n(app, n, size):
    return [it["key"] for it in app.page(None, "high", None, n, size)["items"]]


@pytest.mark.slow
def test_al_next_ingests_what_the_review_page_saved(tiny_onnx_path, tmp_path):
    """The answers file a person fills on the page is an answers CSV `al next --labels` takes as it is.

    The pool of an `al` run is the reviewed images folder; each image has one classified detection.
    """
    from train_helpers import FAST, make_trees

    from trapkit.train.run import Run

    case = make_review_case(tmp_path / "case", tiny_onnx_path, one_per_image=True)
    trees = make_trees(tmp_path / "trees", classes=("bear", "cattle", "dog"))
    run = tmp_path / "run"
    assert main(["al", "init", str(run), "--labelled", str(trees["labelled"]), "--unlabelled", str(case["images"]),
                 "--validation", str(trees["validation"]), "--batch", "2", *FAST]) == 0
    answers = tmp_path / "answers.csv"
    app = _app(case, answers)
    server = grid.start(app)
    try:
        keys = _first_page(app)
        with browser() as (new_page, left_machine):
            page = new_page(server.url)
            press(page, "/")
            page.keyboard.type("bear")
            press(page, "Enter")  # the first crop: a bear, whatever the model said
            press(page, "a")  # the rest as the model says
            assert left_machine == []
    finally:
        server.close()
    rows = read_rows(answers)
    assert len(rows) == len(keys) == 8 and rows[row_key(keys[0])] == "bear"
    assert main(["al", "next", str(run), "--labels", str(answers), "--allow-new-classes", *FAST[-4:]]) == 0
    df = Run(run).load_manifest()
    labelled = {p: l for p, l in zip(df["path"], df["label"]) if l}
    assert {p: labelled.get(p) for p in (k.rpartition("#")[0] for k in keys)} == {
        k.rpartition("#")[0]: rows[row_key(k)] for k in keys}


@pytest.mark.slow
def test_similar_order_and_the_whole_image_from_the_keyboard(case, tmp_path, tiny_onnx_path):
    app = _app(case, tmp_path / "answers.csv", model=tiny_onnx_path)
    server = grid.start(app)
    try:
        with browser() as (new_page, left_machine):
            page = new_page(server.url)
            first = page.get_attribute("#grid .tile.cursor", "data-key")
            press(page, "ArrowRight", "ArrowRight")
            ref = page.get_attribute("#grid .tile.cursor", "data-key")
            press(page, "s")  # most similar to the crop under the cursor first: the crop itself
            assert page.get_attribute("#grid .tile:first-child", "data-key") == ref
            assert "Most similar first" in page.inner_text("#order")
            press(page, "o")  # back to confidence order
            assert page.get_attribute("#grid .tile:first-child", "data-key") == first
            assert "Highest first" in page.inner_text("#order")
            press(page, "Enter")  # the whole photo with the box drawn where the crop is
            page.wait_for_function("document.querySelector('#frame-img').complete")
            assert page.is_visible("#frame") and page.is_visible("#frame-box")
            assert page.evaluate("document.querySelector('#frame-img').naturalWidth") > 0
            press(page, "Enter")
            assert not page.is_visible("#frame")
            assert left_machine == []
    finally:
        server.close()


def _rolled_up(case, tmp_path):
    """RESULTS as `classify --rollup` leaves it: a taxon above the classes ("carnivora", id 5 of a 5-class model)
    is the answer of two detections."""
    doc = json.loads(case["results"].read_text())
    doc["classification_categories"]["5"] = "carnivora"
    doc["info"]["classifier_metadata"]["model_classes"] = 5
    rolled = 0
    for im in doc["images"]:
        for det in im["detections"] or ():
            if det.get("classifications") and rolled < 2:
                det["classifications"].insert(0, ["5", 0.91])
                rolled += 1
    path = tmp_path / "rolled.json"
    path.write_text(json.dumps(doc))
    return {**case, "results": path}


@pytest.mark.slow
def test_a_rolled_up_crop_is_a_guess_to_confirm_or_refine(case, tmp_path):
    rolled = _rolled_up(case, tmp_path)
    answers = tmp_path / "answers.csv"
    app = _app(rolled, answers)
    assert app.source.taxa() == ["carnivora"] and "carnivora" not in app.source.classes()
    server = grid.start(app)
    try:
        with browser() as (new_page, left_machine):
            page = new_page(server.url)
            numbered = page.eval_on_selector_all("#groups li.numbered .name", "ns => ns.map(n => n.textContent)")
            assert numbered and not any("carnivora" in n for n in numbered)  # taxa get no number key
            assert page.locator("#groups li", has_text="carnivora? (a taxon: confirm or refine)").count() == 1
            page.click("#groups li[data-group='carnivora']")
            page.wait_for_function("document.querySelectorAll('#grid .tile').length === 2")
            assert [(("taxon" in c), sp) for c, sp in _tiles(page)] == [(True, "carnivora?"), (True, "carnivora?")]
            press(page, "1")  # refine the first: the first species of the sidebar
            press(page, "a")  # confirm the other as it is shown
            assert left_machine == []
    finally:
        server.close()
    rows = read_rows(answers)
    assert sorted(rows.values()).count("carnivora") == 1 and len(rows) == 2
