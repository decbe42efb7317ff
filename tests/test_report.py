"""`trapkit report`: figures recomputed by hand on a small constructed season, the occupancy model's coverage in
200 simulations, activity densities and overlap, field accuracy and class thresholds that classify reads, a
Camtrap DP package from another tool, bad input; and report.html in the real headless Chromium."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ecology_helpers import animal, deployments_csv, person, season
from trapkit.app.cli import main

# Two deployments of ten days each (from the sheet), so 10 trap-nights each.
SHEET = [{"deploymentID": "north", "latitude": 51.0, "longitude": 4.0, "deploymentStart": "2024-05-01T00:00:00",
          "deploymentEnd": "2024-05-11T00:00:00"},
         {"deploymentID": "south", "latitude": 51.1, "longitude": 4.1, "deploymentStart": "2024-05-01T00:00:00",
          "deploymentEnd": "2024-05-11T00:00:00"}]
D = datetime(2024, 5, 1)


def _constructed(tmp_path):
    """Foxes at night, deer by day; records chosen so the 30-minute rule is easy to apply by hand."""
    shots = []

    def shot(dep, when, dets, tag=""):
        shots.append((f"{dep}/{when:%m%d_%H%M%S}{tag}.jpg", when, dets))

    # north: fox at 22:00, 22:10 (same event), 22:50 (new event: 40 min after the last record), day 3 at 01:00
    shot("north", D + timedelta(hours=22), [animal("red fox")])
    shot("north", D + timedelta(hours=22, minutes=10), [animal("red fox"), animal("red fox")])
    shot("north", D + timedelta(hours=22, minutes=50), [animal("red fox")])
    shot("north", D + timedelta(days=2, hours=1), [animal("red fox")])
    # north: deer at 10:00 on day 1, a person, a blank
    shot("north", D + timedelta(days=1, hours=10), [animal("roe deer")])
    shot("north", D + timedelta(days=1, hours=12), [person()])
    shot("north", D + timedelta(days=4, hours=12), [])
    # south: deer at 09:00 and 09:20 (one event), and on day 8 at 14:00 (occasion 2 of 7-day occasions)
    shot("south", D + timedelta(hours=9), [animal("roe deer")])
    shot("south", D + timedelta(hours=9, minutes=20), [animal("roe deer")])
    shot("south", D + timedelta(days=8, hours=14), [animal("roe deer")])
    return season(tmp_path, shots)


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _report(tmp_path, res, images, *extra, sheet=SHEET) -> int:
    return main(["report", str(res), "--images", str(images), "--timezone", "+01:00", "--out",
                 str(tmp_path / "rep"), "--deployments", str(deployments_csv(tmp_path / "dep.csv", sheet)),
                 *extra])


def test_events_trap_nights_and_rai_match_a_hand_count(tmp_path):
    images, res = _constructed(tmp_path)
    assert _report(tmp_path, res, images, "--overlap", "red fox", "Capreolus capreolus") == 0
    rep = tmp_path / "rep"
    effort = {r["deployment"]: r for r in _read(rep / "effort.csv")}
    assert float(effort["north"]["trap_nights"]) == 10.0 and effort["north"]["photos"] == "7"
    species = {r["species"]: r for r in _read(rep / "species.csv")}
    # fox: events at 22:00 (22:10 joins it), 22:50, day 3 01:00 -> 3 events in 20 trap-nights -> RAI 15
    fox = species["Vulpes vulpes"]
    assert (fox["detections"], fox["events"], fox["common_name"]) == ("5", "3", "red fox")
    assert float(fox["rai_per_100_trap_nights"]) == pytest.approx(100 * 3 / 20)
    assert float(fox["naive_occupancy"]) == 0.5
    deer = species["Capreolus capreolus"]
    assert (deer["detections"], deer["events"], deer["naive_occupancy"]) == ("4", "3", "1")
    by_dep = {(r["species"], r["deployment"]): r for r in _read(rep / "species_by_deployment.csv")}
    assert by_dep[("Capreolus capreolus", "south")]["events"] == "2"
    assert float(by_dep[("Capreolus capreolus", "south")]["rai_per_100_trap_nights"]) == pytest.approx(20.0)
    history = _read(rep / "histories" / "Capreolus_capreolus.csv")
    assert [list(r.values()) for r in history] == [["north", "1", "0"], ["south", "1", "1"]]
    fox_history = _read(rep / "histories" / "Vulpes_vulpes.csv")
    assert [list(r.values()) for r in fox_history] == [["north", "1", "0"], ["south", "0", "0"]]
    overlap = _read(rep / "overlap.csv")[0]
    assert overlap["estimator"] == "Delta1" and float(overlap["overlap"]) < 0.15  # night fox, day deer
    operation = _read(rep / "camera_operation.csv")
    assert operation[0]["2024-05-02"] == "2" and operation[0]["2024-05-11"] == "0"  # running, no photo
    html = (rep / "report.html").read_text()
    assert "Vulpes vulpes" in html and "data:image/png;base64," in html and "http" not in html.replace(
        "http-equiv", "")


def test_a_gap_and_a_missing_occasion_are_marked(tmp_path):
    images, res = _constructed(tmp_path)
    sheet = [SHEET[0], SHEET[1] | {"deploymentEnd": "2024-05-30T00:00:00"},
             {"deploymentID": "west", "latitude": 51.2, "longitude": 4.2, "deploymentStart": "2024-05-20T00:00:00",
              "deploymentEnd": "2024-05-30T00:00:00"}]
    assert _report(tmp_path, res, images, sheet=sheet) == 0
    flags = _read(tmp_path / "rep" / "flags.csv")
    assert {"deployment": "south", "flag": "gap before pickup",
            "detail": "20.4 days without a photo (2024-05-09 to 2024-05-30)"} in flags
    assert {"deployment": "west", "flag": "no photos", "detail": "the camera took no timed photo"} in flags
    history = _read(tmp_path / "rep" / "histories" / "Vulpes_vulpes.csv")
    assert list(history[0].values()) == ["north", "1", "0", "NA", "NA", "NA"]  # north ran in occasions 1-2 only
    assert list(history[2].values()) == ["west", "NA", "NA", "0", "0", "0"][:len(history[2])]


def test_the_occupancy_model_covers_known_values_in_200_simulations():
    from trapkit.ecology.occupancy import fit, simulate

    rng = np.random.default_rng(20020101)
    psi, p = 0.6, 0.35
    covered_psi = covered_p = 0
    estimates = []
    for _ in range(200):
        result = fit(simulate(rng, sites=40, occasions=6, psi=psi, p=p, missing=0.1))
        covered_psi += result.psi_low <= psi <= result.psi_high
        covered_p += result.p_low <= p <= result.p_high
        estimates.append((result.psi, result.p))
    assert covered_psi >= 180 and covered_p >= 180  # at least 90% of 200
    mean_psi, mean_p = np.mean(estimates, axis=0)
    assert abs(mean_psi - psi) < 0.05 and abs(mean_p - p) < 0.03  # and it recovers them on average


def test_activity_density_integrates_to_one_and_overlap_is_one_for_copies():
    from trapkit.ecology import activity

    rng = np.random.default_rng(3)
    for n in (5, 40, 200):
        x = rng.vonmises(math.pi / 2, 2.0, n) % (2 * math.pi)
        d = activity.density(x, activity.grid())
        assert d.sum() * 2 * math.pi / activity.GRID == pytest.approx(1.0, abs=1e-9)
        assert activity.overlap(x, x.copy())[0] == pytest.approx(1.0, abs=1e-9)
    day = rng.vonmises(math.pi, 6.0, 120) % (2 * math.pi)
    night = rng.vonmises(0.0, 6.0, 120) % (2 * math.pi)
    value, estimator = activity.overlap(day, night)
    assert estimator == "Delta4" and value < 0.05
    value, estimator = activity.overlap(day[:20], night[:20])
    assert estimator == "Delta1" and value < 0.1


def test_accuracy_and_class_thresholds_that_classify_reads(tmp_path, tiny_onnx_path):
    shots = []
    confs = [0.95, 0.9, 0.85, 0.6, 0.55]
    for k, c in enumerate(confs):  # the model says fox; people say fox, fox, fox, badger, [wrong box]
        shots.append((f"north/f{k}.jpg", D + timedelta(days=k, hours=23), [animal("red fox", conf=c)]))
    shots.append(("north/d0.jpg", D + timedelta(days=6, hours=10), [animal("roe deer", conf=0.7)]))
    images, res = season(tmp_path, shots)
    answers = tmp_path / "answers.csv"
    answers.write_text("File,RelativePath,Detection,Species\r\nf0.jpg,north,0,red fox\r\nf1.jpg,north,0,red fox\r\n"
                       "f2.jpg,north,0,red fox\r\nf3.jpg,north,0,badger\r\nf4.jpg,north,0,[wrong box]\r\n"
                       "d0.jpg,north,0,red fox\r\n")
    assert _report(tmp_path, res, images, "--verified", str(answers), "--target-precision", "0.9",
                   sheet=SHEET[:1]) == 0
    rep = tmp_path / "rep"
    accuracy = {r["class"]: r for r in _read(rep / "accuracy.csv")}
    assert (accuracy["red fox"]["model_said"], accuracy["red fox"]["verified_as"], accuracy["red fox"]["agreed"]) \
        == ("5", "4", "3")
    assert float(accuracy["red fox"]["precision"]) == 0.6 and float(accuracy["red fox"]["recall"]) == 0.75
    thresholds = {r["label"]: r for r in _read(rep / "class_thresholds.csv")}
    assert float(thresholds["red fox"]["threshold"]) == 0.85  # 3 of 3 at or above 0.85; 3 of 4 at 0.6
    assert thresholds["roe deer"]["threshold"] == "1" and "not reached" in thresholds["roe deer"]["note"]
    confusion = {r["verified \\ model"]: r for r in _read(rep / "confusion.csv")}
    assert confusion["[wrong box]"]["red fox"] == "1" and confusion["red fox"]["roe deer"] == "1"
    # The species counts use the people's answers: the wrong box is gone, f3 is a badger, d0 a fox.
    species = {r["species"]: r["detections"] for r in _read(rep / "species.csv")}
    assert species == {"Vulpes vulpes": "4", "Meles meles": "1"}
    # classify --class-thresholds reads the file as written.
    from trapkit.graph import read_spec
    from trapkit.serve.postprocess import read_class_thresholds

    labels = list(read_spec(tiny_onnx_path).labels)
    (tmp_path / "model_thresholds.csv").write_text(
        "label,threshold,precision\n" + "\n".join(f"{lab},0.5,x" for lab in labels[:2]) + "\n")
    assert set(read_class_thresholds(tmp_path / "model_thresholds.csv", labels)) == set(labels[:2])
    assert read_class_thresholds(rep / "class_thresholds.csv", ["red fox", "roe deer", "badger", "blank"]) == {
        "red fox": 0.85, "roe deer": 1.0}


def test_a_camtrap_dp_package_from_another_tool(tmp_path):
    """Event-level observations only, no trapkit columns: the report counts the events at their start."""
    pkg = tmp_path / "other"
    pkg.mkdir()
    (pkg / "datapackage.json").write_text(json.dumps({"profile": "camtrap", "resources": []}))
    (pkg / "deployments.csv").write_text(
        "deploymentID,latitude,longitude,deploymentStart,deploymentEnd\n"
        "d1,1,1,2024-05-01T00:00:00Z,2024-05-05T00:00:00Z\nd2,1,1,2024-05-01T00:00:00Z,2024-05-03T00:00:00Z\n")
    (pkg / "media.csv").write_text("mediaID,deploymentID,timestamp,filePath\n"
                                   "m1,d1,2024-05-01T03:00:00Z,d1/1.jpg\nm2,d2,2024-05-02T03:00:00Z,d2/1.jpg\n")
    (pkg / "observations.csv").write_text(
        "observationID,deploymentID,mediaID,eventID,eventStart,eventEnd,observationLevel,observationType,"
        "scientificName,count\n"
        "o1,d1,,e1,2024-05-01T03:00:00Z,2024-05-01T03:01:00Z,event,animal,Lynx lynx,1\n"
        "o2,d1,,e2,2024-05-01T05:00:00Z,2024-05-01T05:01:00Z,event,animal,Lynx lynx,2\n"
        "o3,d2,,e3,2024-05-02T03:00:00Z,2024-05-02T03:00:00Z,event,blank,,\n")
    assert main(["report", str(pkg), "--out", str(tmp_path / "rep")]) == 0
    lynx = _read(tmp_path / "rep" / "species.csv")[0]
    assert (lynx["species"], lynx["events"], lynx["deployments_detected"]) == ("Lynx lynx", "2", "1")
    assert float(lynx["rai_per_100_trap_nights"]) == pytest.approx(100 * 2 / 6, rel=1e-5)


def test_the_report_reads_trapkits_own_package_as_it_reads_the_results(tmp_path):
    images, res = _constructed(tmp_path)
    sheet = deployments_csv(tmp_path / "dep.csv", SHEET)
    common = ["--images", str(images), "--deployments", str(sheet), "--timezone", "+01:00"]
    assert main(["camtrap-dp", str(res), *common, "--out", str(tmp_path / "pkg")]) == 0
    assert main(["report", str(res), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["report", str(tmp_path / "pkg"), "--out", str(tmp_path / "b")]) == 0
    for name in ("species.csv", "species_by_deployment.csv", "effort.csv", "histories/Vulpes_vulpes.csv"):
        a, b = _read(tmp_path / "a" / name), _read(tmp_path / "b" / name)
        for row in a + b:
            row.pop("common_name", None)  # a package keeps scientific names only
        assert a == b, name


@pytest.mark.parametrize("extra, fragment", [
    ([], "is not a Camtrap DP package: it has no datapackage.json"),
    (["--timezone", "+01:00", "--verified", "a.csv"], "--timezone, --verified do not apply with a Camtrap DP package"),
])
def test_bad_report_inputs_are_one_line(tmp_path, capsys, extra, fragment):
    (tmp_path / "nothing").mkdir()
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "rep"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("trapkit: error:") and "\n" not in err and fragment in err, err


def test_an_empty_package_is_one_line(tmp_path, capsys):
    pkg = tmp_path / "empty"
    pkg.mkdir()
    (pkg / "datapackage.json").write_text("{}")
    (pkg / "deployments.csv").write_text("deploymentID,deploymentStart,deploymentEnd\n")
    (pkg / "media.csv").write_text("mediaID,deploymentID,timestamp\n")
    (pkg / "observations.csv").write_text("observationID,deploymentID,observationLevel,observationType\n")
    assert main(["report", str(pkg), "--out", str(tmp_path / "rep")]) == 1
    assert "an empty season has nothing to report" in capsys.readouterr().err


def test_unknown_overlap_species_and_bad_settings_are_one_line(tmp_path, capsys):
    images, res = _constructed(tmp_path)
    assert _report(tmp_path, res, images, "--overlap", "red fox", "wolf") == 1
    err = capsys.readouterr().err.strip()
    assert "--overlap 'wolf' is no species with events this season" in err and "\n" not in err
    assert _report(tmp_path, res, images, "--occasion", "0") == 1
    assert "--occasion 0 must be at least 1 day" in capsys.readouterr().err


@pytest.mark.slow
def test_report_html_opens_offline_in_chromium(tmp_path):
    """The page, served from 127.0.0.1, shows its pictures and tables; no request leaves the machine."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from review_helpers import CHROMIUM, CHROMIUM_ARGS
    from web_helpers import only_loopback

    images, res = _constructed(tmp_path)
    answers = tmp_path / "answers.csv"
    answers.write_text("File,RelativePath,Detection,Species\r\n0501_220000.jpg,north,0,red fox\r\n"
                       "0501_090000.jpg,south,0,badger\r\n")
    assert _report(tmp_path, res, images, "--overlap", "red fox", "roe deer", "--verified", str(answers)) == 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "rep")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from playwright.sync_api import sync_playwright

    left: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("pageerror", lambda e: left.append(f"page error: {e}"))
            only_loopback(page, left)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/report.html")
            page.wait_for_load_state("load")
            loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 100)")
            assert len(loaded) >= 4 and all(loaded)
            assert page.locator("h2").count() >= 4 and "Vulpes vulpes" in page.content()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert left == []
