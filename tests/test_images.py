import numpy as np
import pytest
from PIL import Image

from trapkit.images import ImageReadError, iter_images, open_image, safe_join, to_model_input


def save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_safe_join_refuses_absolute_and_escaping_paths(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert safe_join(root, "sub/a.jpg") == (root / "sub" / "a.jpg").resolve()
    assert safe_join(root, "sub\\a.jpg") == (root / "sub" / "a.jpg").resolve()  # Windows separators
    for bad in ("/etc/passwd", "../outside.jpg", "sub/../../outside.jpg", "C:\\Windows\\a.jpg"):
        with pytest.raises(ImageReadError):
            safe_join(root, bad)
    assert safe_join(root, "sub/../a.jpg") == root.resolve() / "a.jpg"
    # A link inside the root is the user's own (a subset pool, --sort-into --link): followed, not refused.
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "elsewhere" / "x.jpg")
    (root / "link").symlink_to(tmp_path / "elsewhere")
    img, _ = open_image(safe_join(root, "link/x.jpg"))
    assert img.size == (8, 8)


def test_missing_empty_corrupt_files_are_image_errors(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        open_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        open_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(ImageReadError, match="not a readable image"):
        open_image(tmp_path / "junk.jpg")


def test_truncated_jpeg_decodes_partially_with_a_warning(tmp_path, samples_dir):
    data = (samples_dir / "ocelot.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    img, notes = open_image(path)
    assert img.mode == "RGB" and img.size == Image.open(samples_dir / "ocelot.jpg").size
    assert notes and "truncated" in notes[0]


def test_exif_orientation_is_applied(tmp_path):
    # A 40x20 image whose EXIF says "rotate 90": upright it is 20x40, red on top.
    img = Image.new("RGB", (40, 20), "blue")
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to view
    path = save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    upright, _ = open_image(path)
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[2, 10], np.asarray(upright)[-3, 10]
    assert top[0] > 200 and bottom[2] > 200  # red now at the top, blue at the bottom


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "I;16"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    img = Image.new("RGB", (30, 20), (10, 200, 30)).convert(mode) if mode != "I;16" else Image.new("I;16", (30, 20), 4000)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    path = save(img, tmp_path / f"x.{fmt.lower()}", format=fmt)
    out, _ = open_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)


def test_float_tiff_is_scaled_not_black(tmp_path):
    ramp = np.tile(np.linspace(0.0, 0.5, 40, dtype=np.float32), (20, 1))  # (20, 40), a 32-bit float image
    path = save(Image.fromarray(ramp, "F"), tmp_path / "float.tif")
    out, _ = open_image(path)
    arr = np.asarray(out)
    assert out.mode == "RGB" and arr[:, -1].min() == 255 and arr[:, 0].max() == 0  # brightest pixel -> 255


def test_decompression_bombs_are_refused_as_too_large(tmp_path):
    from trapkit.images import FAILURE_TOO_LARGE, read_header

    path = save(Image.new("1", (14_000, 14_000)), tmp_path / "bomb.png")  # 196 MP, a few KB on disk
    with pytest.raises(ImageReadError, match="over trapkit's limit of 179 megapixels per image") as e:
        open_image(path)
    assert e.value.code == FAILURE_TOO_LARGE
    # Between Pillow's warning level (~89 MP) and the limit: an image like any other.
    assert read_header(save(Image.new("1", (10_000, 10_000)), tmp_path / "big.png")).size == (10_000, 10_000)


def test_pipes_and_devices_named_like_images_are_refused_without_blocking(tmp_path):
    import os

    from trapkit.images import FAILURE_NOT_FILE, read_header

    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(ImageReadError, match="not a regular file") as e:
        read_header(fifo)
    assert e.value.code == FAILURE_NOT_FILE
    with pytest.raises(ImageReadError, match="not a regular file"):
        open_image("/dev/zero")


def test_draft_decodes_smaller_but_never_below_the_requested_size(samples_dir):
    full, _ = open_image(samples_dir / "human.jpg")
    small, _ = open_image(samples_dir / "human.jpg", min_size=(224, 224))
    assert small.width < full.width and small.width >= 224 and small.height >= 224
    assert abs(small.width / small.height - full.width / full.height) < 0.02


def test_model_input_policies():
    img = Image.new("RGB", (300, 100), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 100, 100))  # left third black
    squash = to_model_input(img, 64, "squash")
    crop = to_model_input(img, 64, "center_crop")
    assert squash.shape == crop.shape == (64, 64, 3) and squash.dtype == np.uint8
    assert squash[:, 0].max() < 30  # squash keeps the black left edge
    assert crop[:, 0].min() > 220  # centre crop cuts it off


def test_iter_images_sorted_recursive_skips_hidden_and_non_images(tmp_path):
    for rel in ("b/2.jpg", "a/1.PNG", ".hidden/3.jpg", "notes.txt", "c.jpeg"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in iter_images(tmp_path)] == ["a/1.PNG", "b/2.jpg", "c.jpeg"]


def test_iter_images_follows_linked_folders_once(tmp_path):
    (tmp_path / "real" / "cam1").mkdir(parents=True)
    (tmp_path / "real" / "cam1" / "a.jpg").write_bytes(b"x")
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "subset").symlink_to(tmp_path / "real" / "cam1", target_is_directory=True)  # a pool made of links
    (pool / "loop").symlink_to(pool, target_is_directory=True)  # a link back up must not be walked forever
    assert [p.relative_to(pool).as_posix() for p in iter_images(pool)] == ["subset/a.jpg"]
