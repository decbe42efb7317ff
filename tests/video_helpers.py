"""Real video files for the tests, encoded with PyAV from the bundled camera-trap photos.

Frame n shows photo n % 10 (sorted by name), squashed to the video's size, so any
frame can be told from its neighbours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "trapkit" / "data" / "camera-traps"
SIZE = (480, 360)
RATE = 10


def photo_frames(n: int, size=SIZE) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames cycling through the bundled photos."""
    from PIL import Image

    photos = sorted(SAMPLES.glob("*.jpg"))
    out = []
    for i in range(n):
        with Image.open(photos[i % len(photos)]) as img:
            out.append(np.asarray(img.convert("RGB").resize(size, Image.BILINEAR)))
    return out


def encode(path: Path, frames: list[np.ndarray], codec: str = "libx264", rate: int = RATE) -> Path:
    """Write `frames` to `path` (the container from its extension): H.264 yuv420p, or MJPEG full-range."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        h, w = frames[0].shape[:2] if frames else SIZE[::-1]
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}
        container.start_encoding()
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * keep)])
    return dst


def video_set(folder: Path, frames: int = 20) -> dict[str, Path]:
    """The videos the tests use: H.264 MP4, MJPEG AVI (common in camera traps), a truncated AVI,
    an MP4 cut before its index, an AVI with no frames, and a file that is no video."""
    pictures = photo_frames(frames)
    videos = {
        "mp4": encode(folder / "clip.mp4", pictures),
        "avi": encode(folder / "trap.avi", pictures, codec="mjpeg"),
        "empty": encode(folder / "empty.avi", [], codec="mjpeg"),
    }
    videos["truncated"] = truncate(videos["avi"], folder / "cut.avi")
    videos["cut_mp4"] = truncate(videos["mp4"], folder / "cut.mp4")
    (folder / "junk.mp4").write_bytes(b"not a video " * 50)
    videos["junk"] = folder / "junk.mp4"
    return videos


def flat_png(width: int, height: int) -> bytes:
    """A valid black greyscale PNG of any size, about 4 KB per megapixel; made 64 rows at a time."""
    import zlib

    from web_helpers import png

    packer = zlib.compressobj(3)  # level 3: fast, and ~4 KB per megapixel of black
    rows = bytes(width + 1) * 64  # each row: filter type 0, then `width` black pixels
    body = b"".join(packer.compress(rows[:(width + 1) * min(64, height - y)]) for y in range(0, height, 64))
    return png(width, height, body + packer.flush())


def png_video(path: Path, frame: tuple[int, int], stated: tuple[int, int] | None = None, frames: int = 2) -> Path:
    """An AVI of `frames` black PNG frames of size `frame` (width, height), whose header states `stated`
    (default: the true size). Huge frames stay small on disk: 13400x13400 is ~0.8 MB a frame."""
    from fractions import Fraction

    import av

    png = flat_png(*frame)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=RATE)
        stream.width, stream.height = stated or frame
        stream.pix_fmt = "gray"
        container.start_encoding()
        for n in range(frames):
            packet = av.Packet(png)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, n, n, Fraction(1, RATE)
            container.mux(packet)
    return path
