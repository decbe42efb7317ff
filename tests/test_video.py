"""serve/video.py on real videos encoded from the bundled photos; MegaDetector (OpenCV) as the reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classify_helpers import megadetector_module, megadetector_validate
from trapkit.video import (
    FAILURE_MISSING, FAILURE_NO_FRAMES, FAILURE_PAST_END, FAILURE_TRUNCATED, FAILURE_UNREADABLE, VideoReadError,
    frame_file, probe, read_frames, split_frame, video_results,
)
from video_helpers import RATE, photo_frames, video_set


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return video_set(tmp_path_factory.mktemp("videos"))


def _opencv_frames(path, count: int) -> list[np.ndarray]:
    """Frames as MegaDetector reads them: OpenCV, one after another, converted to RGB."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    for _ in range(count):
        ok, bgr = cap.read()
        assert ok
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


@pytest.mark.parametrize("kind", ["mp4", "avi"])
def test_frame_numbers_are_megadetectors(videos, kind):
    wanted = [0, 7, 8, 19]
    got = {n: np.asarray(img, dtype=np.int16) for n, img, failure in read_frames(videos[kind], wanted)
           if failure is None}
    assert sorted(got) == wanted
    reference = _opencv_frames(videos[kind], 20)
    for n in wanted:
        assert got[n].shape == (360, 480, 3)
        # Same decoder (FFmpeg) under both; colour conversion may differ by a level or two.
        assert np.abs(got[n] - reference[n]).mean() < 2.0, n
        assert np.abs(got[n] - reference[n + 1 if n < 19 else n - 1]).mean() > 10.0, n  # a neighbour differs
    # And the frames are the photos they were made from.
    photos = photo_frames(9)
    assert np.abs(got[7] - photos[7]).mean() < np.abs(got[7] - photos[8]).mean() / 3


def test_probe_counts_frames_and_rate(videos):
    for kind in ("mp4", "avi"):
        info = probe(videos[kind])
        assert (info.frames, info.frame_rate) == (20, RATE)
    assert probe(videos["empty"]).frames == 0


def test_frames_it_cannot_reach_get_failure_codes_and_the_rest_still_come(videos):
    cut = list(read_frames(videos["truncated"], [0, 3, 18, 19]))
    assert [(n, failure) for n, _, failure in cut] == [(0, None), (3, None), (18, FAILURE_TRUNCATED),
                                                       (19, FAILURE_TRUNCATED)]
    past = list(read_frames(videos["mp4"], [19, 20, 500]))
    assert [(n, failure) for n, _, failure in past] == [(19, None), (20, FAILURE_PAST_END), (500, FAILURE_PAST_END)]
    assert [(n, f) for n, _, f in read_frames(videos["empty"], [0, 5])] == [(0, FAILURE_NO_FRAMES),
                                                                          (5, FAILURE_NO_FRAMES)]


@pytest.mark.parametrize("kind, code", [("cut_mp4", FAILURE_UNREADABLE), ("junk", FAILURE_UNREADABLE),
                                        ("missing", FAILURE_MISSING)])
def test_unopenable_videos_raise_with_a_code(videos, tmp_path, kind, code):
    path = videos.get(kind, tmp_path / "nope.mp4")
    with pytest.raises(VideoReadError) as e:
        list(read_frames(path, [0]))
    assert e.value.code == code and "\n" not in str(e.value)


def test_frame_names_are_megadetectors():
    vu = megadetector_module("detection.video_utils")
    assert frame_file("a/b.MP4", 123) == "a/b.MP4/" + vu._frame_number_to_filename(123)
    assert split_frame("a/b.MP4/frame000123.jpg") == ("a/b.MP4", 123)
    assert split_frame("a/b/frame000123.jpg") is None and split_frame("a/b.mp4") is None
    assert split_frame("b.avi/frame1.png") is None


def _frame_doc() -> dict:
    def det(conf, cid, category="1"):
        return {"category": category, "conf": conf, "bbox": [0.1, 0.2, 0.3, 0.4], "classifications": [[cid, 0.8]]}

    images = [
        {"file": "site/clip.mp4/frame000000.jpg", "detections": [det(0.5, "0"), det(0.9, "1", "2")]},
        {"file": "site/clip.mp4/frame000010.jpg", "detections": [det(0.95, "1"), det(0.95, "0")]},
        {"file": "site/clip.mp4/frame000020.jpg", "detections": [], "classification_failure": FAILURE_TRUNCATED},
        {"file": "trap.avi/frame000000.jpg", "detections": []},
        {"file": "gone.avi/frame000000.jpg", "failure": "video unreadable", "detections": None},
    ]
    return {"info": {"format_version": "1.6", "detector": "md_v5a.0.0.pt"},
            "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
            "classification_categories": {"0": "deer", "1": "elk"}, "images": images}


def test_video_level_file_has_megadetectors_shape_and_validates(tmp_path):
    doc = _frame_doc()
    ours = video_results(doc, {"site/clip.mp4": 10.0, "trap.avi": 30.0})
    # MegaDetector's own conversion (it cannot read a failed frame, so it gets the others).
    frames = tmp_path / "frames.json"
    frames.write_text(json.dumps({**doc, "images": doc["images"][:4]}))
    megadetector_module("detection.video_utils").frame_results_to_video_results(str(frames), str(tmp_path / "md.json"))
    theirs = json.loads((tmp_path / "md.json").read_text())
    assert [(im["file"], im["detections"]) for im in ours["images"][:2]] == [
        (im["file"], im["detections"]) for im in theirs["images"]]
    clip, trap, gone = ours["images"]
    assert [(d["category"], d["conf"], d["frame_number"]) for d in clip["detections"]] == [("1", 0.95, 10),
                                                                                         ("2", 0.9, 0)]
    assert (clip["frame_rate"], clip["frames_processed"]) == (10.0, [0, 10, 20])
    assert (trap["detections"], trap["frames_processed"]) == ([], [0])
    assert (gone["failure"], gone["detections"], gone["frame_rate"]) == ("video unreadable", None, -1.0)
    assert ours["classification_categories"] == doc["classification_categories"]
    assert doc == _frame_doc()  # the input is left alone
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    megadetector_validate(tmp_path / "ours.json")
