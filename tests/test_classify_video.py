"""`trapkit classify` on camera-trap video: MegaDetector's frame-level results, `--frame-sample`, `--video-out`.

The videos are real files encoded from the bundled photos (tests/video_helpers.py):
H.264 in MP4 and MJPEG in AVI, a truncated AVI, an AVI with no frames, a file that
is no video, and a video that is not there; each failure is recorded and the run goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from classify_helpers import megadetector_module, megadetector_validate, top1
from trapkit.app.cli import main
from trapkit.prepare import crops_from_image
from trapkit.serve.classify import KILL_AFTER_ENV
from trapkit.serve.postprocess import classify, plain_plan
from trapkit.serve.runtime import open_runtime
from trapkit.serve.settings import ClassifySettings
from trapkit.video import (
    FAILURE_MISSING, FAILURE_NO_FRAMES, FAILURE_PAST_END, FAILURE_TRUNCATED, FAILURE_UNREADABLE, read_frames,
)
from video_helpers import video_set

PHOTOS = ["african_elephants.jpg", "american_black_bear.jpg", "blank.jpg", "blank2.jpg", "blank3.jpg",
          "domestic_cattle.jpg", "domestic_dog.jpg", "human.jpg", "ocelot.jpg", "vehicle.jpg"]  # frame n: n % 10


@pytest.fixture(scope="module")
def videos(tmp_path_factory, samples_dir):
    folder = tmp_path_factory.mktemp("videos") / "site"
    found = video_set(folder)
    shutil.copy(samples_dir / "ocelot.jpg", folder / "ocelot.jpg")
    return folder.parent, found


def _frame_results(samples_dir, path) -> dict:
    """MegaDetector frame-level results for the test videos: each frame carries its photo's detections."""
    source = {im["file"]: im["detections"] for im in
              json.loads((samples_dir / "md_v5a_detections.json").read_text())["images"]}
    wanted = {"site/clip.mp4": [0, 5, 6, 10, 19, 25], "site/trap.avi": [0, 6, 8], "site/cut.avi": [0, 5, 18],
              "site/empty.avi": [0], "site/junk.mp4": [0], "site/gone.mp4": [0]}
    images = [{"file": f"{video}/frame{n:06d}.jpg", "detections": source[PHOTOS[n % 10]] or
               [{"category": "1", "conf": 0.5, "bbox": [0.1, 0.1, 0.3, 0.3]}]}
              for video, frames in wanted.items() for n in frames]
    images.append({"file": "site/ocelot.jpg", "detections": source["ocelot.jpg"]})
    doc = {"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
           "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": images}
    path.write_text(json.dumps(doc))
    return doc


def _by_file(doc: dict) -> dict:
    return {im["file"]: im for im in doc["images"]}


def test_frame_level_results_are_classified_from_the_video(videos, samples_dir, tiny_onnx_path, tmp_path):
    root, found = videos
    md = tmp_path / "frames.json"
    _frame_results(samples_dir, md)
    out, video_out = tmp_path / "out.json", tmp_path / "videos.json"
    assert main(["classify", str(root), "--model", str(tiny_onnx_path), "--detections", str(md), "--out", str(out),
                 "--video-out", str(video_out), "--csv", str(tmp_path / "out.csv")]) == 0
    result = json.loads(out.read_text())
    megadetector_validate(out)
    entries = _by_file(result)
    failures = {f: im.get("classification_failure") for f, im in entries.items() if im.get("classification_failure")}
    assert failures == {"site/clip.mp4/frame000025.jpg": FAILURE_PAST_END,
                        "site/cut.avi/frame000018.jpg": FAILURE_TRUNCATED,
                        "site/empty.avi/frame000000.jpg": FAILURE_NO_FRAMES,
                        "site/junk.mp4/frame000000.jpg": FAILURE_UNREADABLE,
                        "site/gone.mp4/frame000000.jpg": FAILURE_MISSING}
    for f, im in entries.items():  # the detector's boxes stay on failed frames, unclassified
        wanted = [d["category"] == "1" and d["conf"] >= 0.1 for d in im["detections"]]
        assert [("classifications" in d) for d in im["detections"]] == [w and f not in failures for w in wanted], f

    # The frame's crops are the ones the single-image path makes from the same decoded frame.
    with open_runtime(tiny_onnx_path) as runtime:
        prep = ClassifySettings().preprocessing(runtime.spec)
        for video, number in (("clip.mp4", 5), ("trap.avi", 6), ("cut.avi", 5)):
            (_, frame, _), = read_frames(root / "site" / video, [number])
            im = entries[f"site/{video}/frame{number:06d}.jpg"]
            dets = [d for d in im["detections"] if "classifications" in d]
            probs = runtime.predict(crops_from_image(frame, [d["bbox"] for d in dets], prep))
            plan = plain_plan(runtime.spec.labels)
            assert [d["classifications"] for d in dets] == [classify(p, plan, 5) for p in probs], video

    # Video level, in the shape of MegaDetector's own conversion of this very file.
    ours = json.loads(video_out.read_text())
    megadetector_validate(video_out)
    vu = megadetector_module("detection.video_utils")
    options = vu.FrameToVideoOptions()
    options.non_video_behavior = "skip_with_warning"  # the photo among the frames
    vu.frame_results_to_video_results(str(out), str(tmp_path / "md_videos.json"), options)
    theirs = json.loads((tmp_path / "md_videos.json").read_text())
    assert [(im["file"], im["detections"]) for im in ours["images"]] == [
        (im["file"], im["detections"]) for im in theirs["images"]]
    clip = _by_file(ours)["site/clip.mp4"]
    assert clip["frame_rate"] == 10.0 and clip["frames_processed"] == [0, 5, 6, 10, 19, 25]
    assert "classifications" in clip["detections"][0]
    assert _by_file(ours)["site/gone.mp4"]["frame_rate"] == 0.0  # unknown, as OpenCV reports it
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert any(r.startswith("site/clip.mp4/frame000005.jpg,") for r in rows)


def test_frames_of_a_video_are_one_sequence_for_smoothing(videos, samples_dir, tiny_onnx_path, tmp_path):
    root, _ = videos
    md = tmp_path / "frames.json"
    _frame_results(samples_dir, md)
    cct = tmp_path / "cct.json"
    assert main(["classify", str(root), "--model", str(tiny_onnx_path), "--detections", str(md), "--out",
                 str(tmp_path / "out.json"), "--smooth", "--sequences-out", str(cct)]) == 0
    seqs = {}
    for im in json.loads(cct.read_text())["images"]:
        seqs.setdefault(im["seq_id"], []).append(im["file_name"])
    clip = next(files for files in seqs.values() if files[0].startswith("site/clip.mp4/"))
    assert clip == [f"site/clip.mp4/frame{n:06d}.jpg" for n in (0, 5, 6, 10, 19, 25)]
    md_smooth = megadetector_module("postprocessing.classification_postprocessing")
    plain = tmp_path / "plain.json"
    assert main(["classify", str(root), "--model", str(tiny_onnx_path), "--detections", str(md), "--out",
                 str(plain)]) == 0
    theirs = md_smooth.smooth_classification_results_sequence_level(json.loads(plain.read_text()), str(cct))
    assert top1(json.loads((tmp_path / "out.json").read_text())) == top1(theirs)


def test_frame_sample_classifies_every_nth_frame_whole(videos, tiny_onnx_path, tmp_path):
    root, found = videos
    out = tmp_path / "out.json"
    assert main(["classify", str(root), "--model", str(tiny_onnx_path), "--frame-sample", "5", "--out", str(out),
                 "--video-out", str(tmp_path / "videos.json")]) == 0
    result = json.loads(out.read_text())
    megadetector_validate(out)
    entries = _by_file(result)
    for video in ("clip.mp4", "trap.avi"):
        assert [f for f in entries if f.startswith(f"site/{video}/")] == [
            f"site/{video}/frame{n:06d}.jpg" for n in (0, 5, 10, 15)]
    assert entries["site/ocelot.jpg"]["detections"][0]["classifications"]  # photos beside the videos
    assert (entries["site/empty.avi/frame000000.jpg"]["failure"], entries["site/empty.avi/frame000000.jpg"][
        "detections"]) == (FAILURE_NO_FRAMES, None)
    assert entries["site/junk.mp4/frame000000.jpg"]["failure"] == FAILURE_UNREADABLE
    assert entries["site/cut.mp4/frame000000.jpg"]["failure"] == FAILURE_UNREADABLE  # cut before its index
    cut = [f for f in entries if f.startswith("site/cut.avi/")]
    assert cut and all(entries[f].get("failure") in (None, FAILURE_TRUNCATED) for f in cut)
    # A whole frame is the model's own resize of the decoded frame.
    with open_runtime(tiny_onnx_path) as runtime:
        (_, frame, _), = read_frames(found["avi"], [10])
        probs = runtime.predict(crops_from_image(frame, None, ClassifySettings().preprocessing(runtime.spec)))
        expected = classify(probs[0], plain_plan(runtime.spec.labels), 5)
    assert entries["site/trap.avi/frame000010.jpg"]["detections"][0]["classifications"] == expected
    by_video = _by_file(json.loads((tmp_path / "videos.json").read_text()))
    assert by_video["site/clip.mp4"]["frames_processed"] == [0, 5, 10, 15]
    assert by_video["site/junk.mp4"]["failure"] == FAILURE_UNREADABLE and by_video["site/junk.mp4"]["detections"] is None
    megadetector_validate(tmp_path / "videos.json")


def test_frame_sample_must_be_positive(videos, tiny_onnx_path, tmp_path, capsys):
    root, _ = videos
    assert main(["classify", str(root), "--model", str(tiny_onnx_path), "--frame-sample", "0", "--out",
                 str(tmp_path / "out.json")]) == 1
    assert "frame-sample must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_video_run_resumes_to_the_same_output(videos, samples_dir, tiny_onnx_path, tmp_path):
    root, _ = videos
    md = tmp_path / "frames.json"
    _frame_results(samples_dir, md)

    def argv(out, *extra):
        return ["classify", str(root), "--model", str(tiny_onnx_path), "--detections", str(md), "--out", str(out),
                "--checkpoint-every", "4", "--batch-size", "3", *extra]

    reference = tmp_path / "reference.json"
    assert main(argv(reference)) == 0
    out = tmp_path / "out.json"
    killed = subprocess.run([sys.executable, "-m", "trapkit.app.cli", *argv(out)], env={**os.environ, KILL_AFTER_ENV: "11"},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = json.loads((tmp_path / "out.json.checkpoint.json").read_text())["done"]
    assert 0 < len(done) < 11
    assert main(argv(out, "--resume")) == 0

    def comparable(path):
        doc = json.loads(path.read_text())
        doc["info"].pop("classification_completion_time")
        return doc

    assert comparable(out) == comparable(reference)


def test_frames_already_extracted_to_a_folder_are_read_as_images(samples_dir, tiny_onnx_path, tmp_path):
    (tmp_path / "clip.mp4").mkdir()
    shutil.copy(samples_dir / "ocelot.jpg", tmp_path / "clip.mp4" / "frame000003.jpg")
    source = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    ocelot = next(im for im in source["images"] if im["file"] == "ocelot.jpg")
    md = tmp_path / "md.json"
    md.write_text(json.dumps({**source, "images": [{**ocelot, "file": "clip.mp4/frame000003.jpg"}]}))
    out = tmp_path / "out.json"
    assert main(["classify", str(tmp_path), "--model", str(tiny_onnx_path), "--detections", str(md), "--out",
                 str(out)]) == 0
    assert "classifications" in json.loads(out.read_text())["images"][0]["detections"][0]


def test_video_level_results_are_classified_frame_by_frame(videos, samples_dir, tiny_onnx_path, tmp_path):
    """MegaDetector's current video output: one entry per video, each detection with its `frame_number`."""
    root, _ = videos
    source = {im["file"]: im["detections"] for im in
              json.loads((samples_dir / "md_v5a_detections.json").read_text())["images"]}

    def dets(number):
        return [{**d, "frame_number": number} for d in source[PHOTOS[number % 10]]]

    images = [
        {"file": "site/clip.mp4", "frame_rate": 10.0, "frames_processed": [0, 5, 25], "detections":
         dets(0) + dets(5) + [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2], "frame_number": 25}]},
        {"file": "site/junk.mp4", "frame_rate": 10.0, "frames_processed": [0], "detections": dets(8)},
        {"file": "site/broken.mp4", "frame_rate": -1, "frames_processed": [], "failure": "Failure processing video",
         "detections": None},
    ]
    md = tmp_path / "videos.json"
    md.write_text(json.dumps({"info": {"format_version": "1.5", "detector": "md_v5a.0.0.pt"},
                              "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
                              "images": images}))
    megadetector_validate(md)
    out = tmp_path / "out.json"
    assert main(["classify", str(root), "--model", str(tiny_onnx_path), "--detections", str(md), "--out", str(out),
                 "--video-out", str(tmp_path / "again.json"), "--csv", str(tmp_path / "out.csv")]) == 0
    megadetector_validate(out)
    clip, junk, broken = json.loads(out.read_text())["images"]
    classified = [(d["frame_number"], "classifications" in d) for d in clip["detections"] if d["conf"] >= 0.1]
    assert classified == [(0, True)] * 7 + [(5, True)] * 3 + [(25, False)]  # frame 25 is past the end
    assert "classification_failure" not in clip
    assert "frame past end of video: frames 25" in (tmp_path / "out.csv").read_text()
    assert junk["classification_failure"] == FAILURE_UNREADABLE and broken["failure"] == "Failure processing video"
    # Frame 5's boxes are cut from frame 5.
    with open_runtime(tiny_onnx_path) as runtime:
        (_, frame, _), = read_frames(root / "site" / "clip.mp4", [5])
        five = [d for d in clip["detections"] if d["frame_number"] == 5]
        probs = runtime.predict(crops_from_image(frame, [d["bbox"] for d in five],
                                                 ClassifySettings().preprocessing(runtime.spec)))
        assert [d["classifications"] for d in five] == [classify(p, plain_plan(runtime.spec.labels), 5) for p in probs]
    # Already video-level: --video-out keeps the entries as they are.
    assert json.loads((tmp_path / "again.json").read_text())["images"] == json.loads(out.read_text())["images"]


def test_without_pyav_videos_stop_with_one_line(videos, samples_dir, tiny_onnx_path, tmp_path, capsys, monkeypatch):
    root, _ = videos
    md = tmp_path / "frames.json"
    _frame_results(samples_dir, md)
    monkeypatch.setitem(sys.modules, "av", None)  # as on a machine without trapkit[video]: `import av` fails
    for source in (["--detections", str(md)], ["--frame-sample", "5"]):
        assert main(["classify", str(root), "--model", str(tiny_onnx_path), *source, "--out",
                     str(tmp_path / "out.json")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.endswith("reading video needs PyAV; install it with: pip install 'trapkit[video]'")
        assert "\n" not in err and not (tmp_path / "out.json").exists()
