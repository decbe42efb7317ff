"""`trapkit camtrap-dp`: packages validated by frictionless against the Camtrap DP 1.0 profile and table schemas
(served on 127.0.0.1), on constructed seasons with EXIF bursts, the bundled photos classified by a real model,
videos, and verified answers; and every bad input as one line."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from camtrap_helpers import errors, validate
from ecology_helpers import T0, animal, burst, deployments_csv, person, photo, results, season, vehicle
from trapkit.app.cli import main

DEPLOYMENTS = [{"deploymentID": "cam_a", "latitude": 51.1, "longitude": 4.2, "locationName": "pond"},
               {"deploymentID": "cam_b", "latitude": 51.2, "longitude": 4.3, "cameraModel": "Reconyx HF2X"}]


def _shots():
    return (burst("cam_a", T0, 3, lambda k: [animal("red fox")] * (1 + (k == 1)))  # 1, 2, 1 foxes: count 2
            + burst("cam_a", T0 + timedelta(hours=5), 2, lambda k: [])  # a blank event
            + burst("cam_b", T0 + timedelta(hours=20), 2, lambda k: [animal("roe deer"), person()])
            + [("cam_b/V_1.jpg", T0 + timedelta(days=1), [vehicle()]),
               ("cam_b/unsure.jpg", T0 + timedelta(days=2), [{"category": "1", "conf": 0.7, "bbox": [0.1, 0.1, 0.2, 0.2]}]),
               ("cam_b/faint.jpg", T0 + timedelta(days=3), [animal("badger", det_conf=0.05)])])  # below 0.2


def _run(tmp_path, res, images, *extra, deployments=DEPLOYMENTS) -> int:
    args = ["camtrap-dp", str(res), "--images", str(images), "--timezone", "+02:00", "--out", str(tmp_path / "pkg")]
    if deployments is not None:
        args += ["--deployments", str(deployments_csv(tmp_path / "deployments.csv", deployments))]
    return main(args + list(extra))


def _table(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _one_line(capsys, fragment: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("trapkit: error:") and "\n" not in err and fragment in err, err
    return err


def test_a_constructed_season_validates_and_says_what_it_saw(tmp_path, capsys):
    images, res = season(tmp_path, _shots())
    assert _run(tmp_path, res, images) == 0
    out = capsys.readouterr().out
    assert "2 deployments, 10 media" in out and "defaulted" in out and "title = Camera-trap season" in out
    report = validate(tmp_path / "pkg", tmp_path)
    assert report.valid, errors(report)

    pkg = tmp_path / "pkg"
    media = _table(pkg / "media.csv")
    assert media[0]["timestamp"] == "2024-05-01T06:00:00+02:00" and media[0]["filePath"] == "cam_a/IMG_0501060000_0.jpg"
    obs = _table(pkg / "observations.csv")
    by_level = {lvl: [o for o in obs if o["observationLevel"] == lvl] for lvl in ("media", "event")}
    types = sorted(o["observationType"] for o in by_level["media"])
    assert types == ["animal"] * 6 + ["blank"] * 3 + ["human"] * 2 + ["unclassified", "vehicle"]  # faint: blank
    fox_event = [o for o in by_level["event"] if o["scientificName"] == "Vulpes vulpes"]
    assert len(fox_event) == 1 and fox_event[0]["count"] == "2"  # the most foxes in one photo of the burst
    assert fox_event[0]["eventStart"] == "2024-05-01T06:00:00+02:00"
    assert fox_event[0]["eventEnd"] == "2024-05-01T06:00:04+02:00"
    deer = next(o for o in by_level["media"] if o["scientificName"] == "Capreolus capreolus")
    assert (deer["bboxX"], deer["bboxWidth"], deer["classificationProbability"]) == ("0.1", "0.3", "0.9")
    assert deer["classificationMethod"] == "machine" and deer["classifiedBy"] == "fox-deer-v1 (trapkit 0.test)"
    events = sorted((o["eventID"], o["observationType"]) for o in by_level["event"])
    assert events == [("e000001", "animal"), ("e000002", "blank"), ("e000003", "animal"), ("e000003", "human"),
                      ("e000004", "vehicle"), ("e000005", "unclassified"), ("e000006", "blank")]
    package = json.loads((pkg / "datapackage.json").read_text())
    taxa = {t["scientificName"]: t for t in package["taxonomic"]}
    assert taxa["Vulpes vulpes"] == {"scientificName": "Vulpes vulpes", "taxonRank": "species", "kingdom": "Animalia",
                                     "class": "Mammalia", "order": "Carnivora", "family": "Canidae",
                                     "genus": "Vulpes", "vernacularNames": {"eng": "red fox"}}
    assert "Meles meles" not in taxa  # the badger detection was below the classify output's threshold
    assert package["temporal"] == {"start": "2024-05-01", "end": "2024-05-04"}
    deployments = _table(pkg / "deployments.csv")
    assert deployments[0]["deploymentStart"] == "2024-05-01T06:00:00+02:00"  # from the first photo
    assert deployments[0]["locationName"] == "pond" and deployments[1]["cameraModel"] == "Reconyx HF2X"


def test_metadata_from_a_file_and_flags_is_not_defaulted(tmp_path, capsys):
    images, res = season(tmp_path, _shots())
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"title": "Pond survey 2024", "contributors": ["Ana Ruiz <ana@example.org>", "Bo Li"],
                                "sampling_design": "targeted", "license": "CC0-1.0"}))
    assert _run(tmp_path, res, images, "--metadata", str(meta), "--media-license", "CC-BY-NC-4.0",
                "--capture-method", "activityDetection", "--capture-method", "timeLapse") == 0
    out = capsys.readouterr().out
    assert "defaulted" not in out
    package = json.loads((tmp_path / "pkg" / "datapackage.json").read_text())
    assert package["contributors"] == [{"title": "Ana Ruiz", "role": "contact", "email": "ana@example.org"},
                                       {"title": "Bo Li", "role": "contributor"}]
    assert package["project"]["samplingDesign"] == "targeted"
    assert package["licenses"] == [{"name": "CC0-1.0", "scope": "data"}, {"name": "CC-BY-NC-4.0", "scope": "media"}]
    assert validate(tmp_path / "pkg", tmp_path).valid


def test_an_event_gap_splits_bursts(tmp_path):
    shots = burst("cam_a", T0, 3, lambda k: [animal("red fox")])
    images, res = season(tmp_path, shots)
    assert _run(tmp_path, res, images, "--event-gap", "1", deployments=DEPLOYMENTS[:1]) == 0
    events = {o["eventID"] for o in _table(tmp_path / "pkg" / "observations.csv")}
    assert len(events) == 3  # photos 2 s apart are three events with a 1 s gap


def test_bundled_photos_classified_by_a_real_model(samples_dir, tiny_onnx_path, tmp_path, capsys, caplog):
    images = tmp_path / "images"
    for k, p in enumerate(sorted(samples_dir.glob("*.jpg"))):
        dest = images / ("site_1" if k % 2 else "site_2") / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    doc = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    for im in doc["images"]:
        im["file"] = next(str(q.relative_to(images)) for q in images.rglob(im["file"]))
    (tmp_path / "md.json").write_text(json.dumps(doc))
    assert main(["classify", str(images), "--model", str(tiny_onnx_path), "--detections", str(tmp_path / "md.json"),
                 "--out", str(tmp_path / "classified.json")]) == 0
    rows = [{"deploymentID": "site_1", "latitude": -2.3, "longitude": 34.8, "deploymentStart": "2006-01-01T00:00:00",
             "deploymentEnd": "2024-12-31T00:00:00"},
            {"deploymentID": "site_2", "latitude": -2.4, "longitude": 34.9, "deploymentStart": "2006-01-01T00:00:00",
             "deploymentEnd": "2024-12-31T00:00:00"}]
    assert _run(tmp_path, tmp_path / "classified.json", images, deployments=rows) == 0
    assert "american_black_bear.jpg" in caplog.text and "no capture time" in caplog.text  # the photo without EXIF
    assert "left out (no timestamp): 1 media" in capsys.readouterr().out
    report = validate(tmp_path / "pkg", tmp_path)
    assert report.valid, errors(report)
    obs = _table(tmp_path / "pkg" / "observations.csv")
    kinds = {o["observationType"] for o in obs}
    assert {"animal", "human", "vehicle", "blank"} <= kinds
    assert len(_table(tmp_path / "pkg" / "media.csv")) == 9
    assert _run(tmp_path, tmp_path / "classified.json", images, "--file-times", deployments=rows) == 0
    assert len(_table(tmp_path / "pkg" / "media.csv")) == 10  # timed by the file's modification time now


def test_videos_are_media_with_their_frames_as_observations(tmp_path):
    av = pytest.importorskip("av")
    import numpy as np

    video = tmp_path / "images" / "cam_v" / "clip.mp4"
    video.parent.mkdir(parents=True)
    with av.open(str(video), "w") as container:
        container.metadata["creation_time"] = "2024-05-01T04:00:00.000000Z"  # UTC
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * k, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    photo(tmp_path / "images" / "cam_v" / "still.jpg", T0 + timedelta(hours=1))
    entries = [{"file": "cam_v/clip.mp4/frame000000.jpg", "detections": [animal("badger")]},
               {"file": "cam_v/clip.mp4/frame000010.jpg", "detections": [animal("badger"), animal("badger")]},
               {"file": "cam_v/still.jpg", "detections": []}]
    (tmp_path / "results.json").write_text(json.dumps(results(entries)))
    rows = [{"deploymentID": "cam_v", "latitude": 50.0, "longitude": 5.0}]
    assert _run(tmp_path, tmp_path / "results.json", tmp_path / "images", deployments=rows) == 0
    report = validate(tmp_path / "pkg", tmp_path)
    assert report.valid, errors(report)
    media = {m["fileName"]: m for m in _table(tmp_path / "pkg" / "media.csv")}
    assert media["clip.mp4"]["fileMediatype"] == "video/mp4"
    assert media["clip.mp4"]["timestamp"] == "2024-05-01T06:00:00+02:00"  # UTC creation time in the camera's zone
    obs = _table(tmp_path / "pkg" / "observations.csv")
    frames = [o for o in obs if o["observationLevel"] == "media" and o["mediaID"] == media["clip.mp4"]["mediaID"]]
    assert sorted(o["eventStart"] for o in frames) == ["2024-05-01T06:00:00+02:00", "2024-05-01T06:00:01+02:00",
                                                      "2024-05-01T06:00:01+02:00"]  # frame 10 at 10 frames/s
    badger = [o for o in obs if o["observationLevel"] == "event" and o["scientificName"] == "Meles meles"]
    assert [o["count"] for o in badger] == ["2"]


def _verified_season(tmp_path):
    shots = (burst("cam_a", T0, 2, lambda k: [animal("red fox", conf=0.6)])
             + burst("cam_a", T0 + timedelta(hours=3), 1, lambda k: [animal("roe deer", conf=0.7)]))
    return season(tmp_path, shots)


def test_verified_answers_become_human_observations(tmp_path):
    images, res = _verified_season(tmp_path)
    answers = tmp_path / "answers.csv"
    answers.write_text("File,RelativePath,Detection,Species,Reviewed\r\n"
                       "IMG_0501060000_0.jpg,cam_a,0,badger,2024-06-03 09:15:00\r\n"
                       "IMG_0501060000_1.jpg,cam_a,0,[wrong box],2024-06-03 09:15:05\r\n")
    assert _run(tmp_path, res, images, "--verified", str(answers), "--verified-by", "Ana Ruiz",
                deployments=DEPLOYMENTS[:1]) == 0
    assert validate(tmp_path / "pkg", tmp_path).valid
    obs = [o for o in _table(tmp_path / "pkg" / "observations.csv") if o["observationLevel"] == "media"]
    human = [o for o in obs if o["classificationMethod"] == "human"]
    assert len(human) == 1 and human[0]["scientificName"] == "Meles meles" and human[0]["classifiedBy"] == "Ana Ruiz"
    assert human[0]["classificationTimestamp"].startswith("2024-06-03T")  # the Reviewed time (this computer's zone)
    assert [o["observationType"] for o in obs] == ["animal", "blank", "animal"]  # the wrong box left out
    assert obs[2]["classificationMethod"] == "machine"


def test_the_reviewer_the_review_page_records_is_classified_by(tmp_path):
    images, res = _verified_season(tmp_path)
    answers = tmp_path / "answers.csv"
    answers.write_text("File,RelativePath,Detection,Species,Reviewed,Reviewer\r\n"
                       "IMG_0501060000_0.jpg,cam_a,0,badger,2024-06-03 09:15:00,Kofi Mensah\r\n")
    assert _run(tmp_path, res, images, "--verified", str(answers), "--verified-by", "Ana Ruiz",
                deployments=DEPLOYMENTS[:1]) == 0
    human = [o for o in _table(tmp_path / "pkg" / "observations.csv") if o["classificationMethod"] == "human"]
    assert {o["classifiedBy"] for o in human} == {"Kofi Mensah"}  # the row's own reviewer wins over --verified-by


def test_a_review_write_verified_copy_is_read_as_human(tmp_path):
    from trapkit.serve.review import verified_results

    images, res = _verified_season(tmp_path)
    doc = json.loads(res.read_text())
    copy = verified_results(doc, {"cam_a/IMG_0501060000_0.jpg#0": "badger"}, "answers.csv")
    (tmp_path / "verified.json").write_text(json.dumps(copy))
    assert _run(tmp_path, tmp_path / "verified.json", images, "--verified-by", "Ana Ruiz",
                deployments=DEPLOYMENTS[:1]) == 0
    obs = [o for o in _table(tmp_path / "pkg" / "observations.csv") if o["observationLevel"] == "media"]
    assert [(o["scientificName"], o["classificationMethod"]) for o in obs] == [
        ("Meles meles", "human"), ("Vulpes vulpes", "machine"), ("Capreolus capreolus", "machine")]
    assert validate(tmp_path / "pkg", tmp_path).valid


# -- bad input: one line each, nothing lost --------------------------------------------------------------------------

def test_without_deployments_a_template_is_written(tmp_path, capsys):
    images, res = season(tmp_path, _shots())
    assert _run(tmp_path, res, images, deployments=None) == 1
    err = _one_line(capsys, "fill in latitude and longitude")
    template = tmp_path / "pkg" / "deployments_template.csv"
    assert str(template) in err
    rows = _table(template)
    assert [r["deploymentID"] for r in rows] == ["cam_a", "cam_b"]
    assert rows[0]["deploymentStart"] == "2024-05-01T06:00:00+02:00" and rows[0]["latitude"] == ""
    for r in rows:
        r["latitude"], r["longitude"] = "51", "4"
    assert _run(tmp_path, res, images, deployments=rows) == 0


@pytest.mark.parametrize("rows, fragment", [
    ([{"deploymentID": "cam_a", "latitude": 95.0, "longitude": 4.2}, DEPLOYMENTS[1]],
     "line 2 (cam_a): latitude '95.0' is not a number between -90 and 90"),
    ([DEPLOYMENTS[0], DEPLOYMENTS[0] | {"latitude": 50}, DEPLOYMENTS[1]], "line 3 (cam_a) repeat a deploymentID"),
    ([DEPLOYMENTS[0]], "has no row for the deployment folder cam_b"),
    ([DEPLOYMENTS[0] | {"deploymentEnd": "2024-01-01T00:00:00", "deploymentStart": "2024-02-01T00:00:00"},
      DEPLOYMENTS[1]], "deploymentEnd is before deploymentStart"),
    ([DEPLOYMENTS[0] | {"deploymentStart": "yesterday"}, DEPLOYMENTS[1]], "deploymentStart 'yesterday' is not a date"),
])
def test_bad_deployments_are_one_line(tmp_path, capsys, rows, fragment):
    images, res = season(tmp_path, _shots())
    assert _run(tmp_path, res, images, deployments=rows) == 1
    _one_line(capsys, fragment)
    assert not (tmp_path / "pkg" / "datapackage.json").exists()


def test_photos_outside_every_deployment_folder_are_refused(tmp_path, capsys):
    images, res = season(tmp_path, _shots() + [("loose.jpg", T0, [])])
    assert _run(tmp_path, res, images) == 1
    _one_line(capsys, "1 media of")
    assert _run(tmp_path, res, images, "--deployment-depth", "2") == 1  # the same photos two levels down: none
    _one_line(capsys, "outside every deployment folder")


def test_photos_outside_the_deployment_period_and_clock_jumps_are_flagged(tmp_path, capsys, caplog):
    shots = (burst("cam_a", T0, 2, lambda k: [animal("red fox")])
             + [("cam_a/IMG_9.jpg", T0 - timedelta(days=3650), [])]  # a reset clock, after the others by name
             + burst("cam_b", T0, 1, lambda k: []))
    images, res = season(tmp_path, shots)
    rows = [DEPLOYMENTS[0] | {"deploymentStart": "2024-04-30T00:00:00", "deploymentEnd": "2024-05-10T00:00:00",
                              "cameraID": "C1"},
            DEPLOYMENTS[1] | {"deploymentStart": "2024-05-01T00:00:00", "deploymentEnd": "2024-05-12T00:00:00",
                              "cameraID": "C1"}]
    assert _run(tmp_path, res, images, deployments=rows) == 0
    assert "deployment cam_a: 1 photos are dated outside its start and end" in caplog.text
    assert "the clock jumps back" in caplog.text
    assert "deployments of one camera overlap in time: cam_a and cam_b (camera C1)" in caplog.text
    dep = _table(tmp_path / "pkg" / "deployments.csv")[0]
    assert dep["timestampIssues"] == "true" and "outside the deployment period" in dep["deploymentComments"]
    assert len(_table(tmp_path / "pkg" / "media.csv")) == 4  # nothing dropped
    assert validate(tmp_path / "pkg", tmp_path).valid


def test_answers_from_another_classify_output_are_refused(tmp_path, capsys):
    images, res = _verified_season(tmp_path)
    answers = tmp_path / "answers.csv"
    answers.write_text("File,RelativePath,Detection,Species\r\nIMG_0501060000_0.jpg,cam_a,3,badger\r\n")
    assert _run(tmp_path, res, images, "--verified", str(answers), deployments=DEPLOYMENTS[:1]) == 1
    _one_line(capsys, "answers 1 detections that RESULTS does not have (cam_a/IMG_0501060000_0.jpg#3)")
    answers.write_text("File,RelativePath,Detection,Species\r\nIMG_0501060000_0.jpg,cam_a,0,zebra\r\n")
    assert _run(tmp_path, res, images, "--verified", str(answers), deployments=DEPLOYMENTS[:1]) == 1
    _one_line(capsys, "names classes the model of RESULTS does not have: answers.csv line 2 (zebra)")


def test_an_empty_season_and_a_missing_timezone_are_one_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "results.json").write_text(json.dumps(results([])))
    assert _run(tmp_path, tmp_path / "results.json", tmp_path / "images") == 1
    _one_line(capsys, "lists no images: an empty season")
    images, res = season(tmp_path, _shots())
    assert main(["camtrap-dp", str(res), "--images", str(images), "--out", str(tmp_path / "p")]) == 1
    _one_line(capsys, "give --timezone")
    assert main(["camtrap-dp", str(res), "--images", str(images), "--out", str(tmp_path / "p"),
                 "--timezone", "Mars/Olympus"]) == 1
    _one_line(capsys, "--timezone 'Mars/Olympus' is neither an offset")


def test_photos_without_any_time_are_one_line(tmp_path, capsys):
    images, res = season(tmp_path, [("cam_a/a.jpg", None, []), ("cam_a/b.jpg", None, [])])
    assert _run(tmp_path, res, images, deployments=DEPLOYMENTS[:1]) == 1
    _one_line(capsys, "no photo under")
    assert _run(tmp_path, res, images, "--file-times", deployments=DEPLOYMENTS[:1]) == 0


def test_an_out_that_is_a_file_stops_before_any_photo_is_read(tmp_path, capsys):
    images, res = season(tmp_path, _shots())
    (tmp_path / "pkg").write_text("not a folder")
    assert _run(tmp_path, res, images) == 1
    _one_line(capsys, "is a file; give a folder")
