import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from mambaout.data.images import ImageReadError, open_rgb, readable_images, to_rgb


def _save_and_read(tmp_path, img, name, **save_kwargs):
    path = tmp_path / name
    img.save(path, **save_kwargs)
    out = open_rgb(path)
    assert out.mode == "RGB"
    assert out.size == img.size
    pixels = np.asarray(out)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (img.size[1], img.size[0], 3)
    return pixels


def _row(mode, values):
    """A one-row image whose pixels are `values`, left to right."""
    img = Image.new(mode, (len(values), 1))
    for x, value in enumerate(values):
        img.putpixel((x, 0), value)
    return img


def _grey(value):
    return [value, value, value]


def _blend(colour, alpha):
    """What compositing `colour` with `alpha` onto white should give."""
    return [c * alpha / 255 + 255 * (1 - alpha / 255) for c in colour]


def _assert_close(actual, expected, tol=1):
    expected = np.asarray(expected, dtype=np.float64)
    assert np.abs(actual.astype(np.float64) - expected).max() <= tol, (actual.tolist(), expected.tolist())


# ---------------------------------------------------------------- every mode -> 8-bit RGB


def test_rgb_png_round_trips_exactly_and_stays_usable(tmp_path):
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(source).save(path)
    img = open_rgb(str(path))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), source)
    # the file is closed by then: the pixels must already be in memory
    assert img.resize((14, 10)).size == (14, 10)
    np.testing.assert_array_equal(np.asarray(img.copy()), source)


@pytest.mark.parametrize("suffix", ["png", "tif", "bmp"])
def test_mode_1(tmp_path, suffix):
    pixels = _save_and_read(tmp_path, _row("1", [0, 1, 0, 1]), f"bw.{suffix}")
    np.testing.assert_array_equal(pixels[0], [_grey(0), _grey(255), _grey(0), _grey(255)])


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_mode_L(tmp_path, suffix):
    pixels = _save_and_read(tmp_path, _row("L", [0, 77, 200, 255]), f"grey.{suffix}")
    np.testing.assert_array_equal(pixels[0], [_grey(0), _grey(77), _grey(200), _grey(255)])


def test_mode_L_jpeg(tmp_path):
    pixels = _save_and_read(tmp_path, Image.new("L", (16, 16), 77), "grey.jpg", quality=95)
    _assert_close(pixels, np.full((16, 16, 3), 77), tol=2)


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_mode_LA_composites_onto_white(tmp_path, suffix):
    img = _row("LA", [(50, 0), (50, 255), (50, 128), (0, 0)])
    pixels = _save_and_read(tmp_path, img, f"la.{suffix}")
    np.testing.assert_array_equal(pixels[0, 0], _grey(255))  # transparent -> white, not its grey
    np.testing.assert_array_equal(pixels[0, 1], _grey(50))  # opaque keeps its grey
    _assert_close(pixels[0, 2], _blend([50, 50, 50], 128))
    np.testing.assert_array_equal(pixels[0, 3], _grey(255))  # transparent black -> white


PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]


def _palette_row():
    img = _row("P", [0, 1, 2, 3, 1])
    img.putpalette([c for colour in PALETTE for c in colour])
    return img


@pytest.mark.parametrize("suffix", ["png", "gif", "bmp", "tif"])
def test_mode_P_maps_palette_colours(tmp_path, suffix):
    pixels = _save_and_read(tmp_path, _palette_row(), f"pal.{suffix}")
    np.testing.assert_array_equal(pixels[0], [*PALETTE, PALETTE[1]])


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_mode_P_transparency_index_becomes_white(tmp_path, suffix):
    path = tmp_path / f"pal_t.{suffix}"
    _palette_row().save(path, transparency=1)
    with Image.open(path) as check:  # the file really is palette + transparency, as meant
        assert check.mode == "P" and "transparency" in check.info
    img = open_rgb(path)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img)[0], [PALETTE[0], _grey(255), PALETTE[2], PALETTE[3], _grey(255)])


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_mode_RGBA_composites_onto_white(tmp_path, suffix):
    img = _row("RGBA", [(10, 20, 30, 0), (10, 20, 30, 255), (200, 100, 0, 128), (0, 0, 0, 64)])
    pixels = _save_and_read(tmp_path, img, f"rgba.{suffix}")
    np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(pixels[0, 1], [10, 20, 30])
    _assert_close(pixels[0, 2], _blend([200, 100, 0], 128))
    _assert_close(pixels[0, 3], _blend([0, 0, 0], 64))


def test_mode_CMYK_tiff(tmp_path):
    img = _row("CMYK", [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255)])
    pixels = _save_and_read(tmp_path, img, "cmyk.tif")
    np.testing.assert_array_equal(pixels[0], [[255, 255, 255], [0, 255, 255], [255, 0, 255], [255, 255, 0], [0, 0, 0]])


def test_mode_CMYK_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # magenta + yellow ink = red
    pixels = _save_and_read(tmp_path, img, "cmyk.jpg", quality=95)
    _assert_close(pixels, np.broadcast_to([255, 0, 0], (16, 16, 3)), tol=4)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_mode_I16_tiff_rescales(tmp_path, mode):
    values = [0, 65535, 32768, 257, 1000]
    raw = np.asarray(values, dtype=">u2" if mode == "I;16B" else "<u2").tobytes()
    img = Image.frombytes(mode, (len(values), 1), raw)
    pixels = _save_and_read(tmp_path, img, "i16.tif")
    _assert_close(pixels[0], [_grey(v * 255 / 65535) for v in values], tol=1)
    assert pixels[0, 1, 0] == 255 and pixels[0, 0, 0] == 0


def test_sixteen_bit_grey_png_rescales(tmp_path):
    values = np.asarray([[0, 65535, 32768, 1000, 300]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert path.read_bytes()[24] == 16  # IHDR bit depth: really a 16-bit PNG
    img = open_rgb(path)  # PIL opens these as "I" or "I;16" depending on its version: either must work
    assert img.mode == "RGB"
    pixels = np.asarray(img)
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 1].tolist() == [255, 255, 255]
    _assert_close(pixels[0], [_grey(v * 255 / 65535) for v in values[0].tolist()], tol=1)


def test_mode_I_with_8bit_content_keeps_values(tmp_path):
    values = [0, 7, 128, 255]
    img = Image.fromarray(np.asarray([values], dtype=np.int32))
    assert img.mode == "I"
    pixels = _save_and_read(tmp_path, img, "i32.tif")
    np.testing.assert_array_equal(pixels[0], [_grey(v) for v in values])


def test_mode_I_with_16bit_content_rescales(tmp_path):
    values = [0, 65535, 32768]
    pixels = _save_and_read(tmp_path, Image.fromarray(np.asarray([values], dtype=np.int32)), "i32_wide.tif")
    _assert_close(pixels[0], [_grey(0), _grey(255), _grey(128)], tol=1)


def test_mode_F_unit_range_scales_to_255(tmp_path):
    values = [0.0, 0.25, 0.5, 1.0]
    img = Image.fromarray(np.asarray([values], dtype=np.float32))
    assert img.mode == "F"
    pixels = _save_and_read(tmp_path, img, "float.tif")
    _assert_close(pixels[0], [_grey(v * 255) for v in values], tol=1)
    assert pixels[0, 3, 0] == 255


# Modes no common format writes: converted in memory with to_rgb.
@pytest.mark.parametrize(
    ("mode", "pixel", "expected"),
    [
        ("RGB", (1, 2, 3), (1, 2, 3)),
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
        ("RGBa", (0, 0, 0, 0), (255, 255, 255)),
        ("RGBa", (10, 20, 30, 255), (10, 20, 30)),
        ("La", (0, 0), (255, 255, 255)),
        ("La", (50, 255), (50, 50, 50)),
        ("PA", (0, 0), (255, 255, 255)),
        ("I;16L", 65535, (255, 255, 255)),
        ("I;16N", 32768, (128, 128, 128)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("YCbCr", (255, 128, 128), (255, 255, 255)),
        ("LAB", (255, 128, 128), (255, 255, 255)),
    ],
)
def test_to_rgb_in_memory_modes(mode, pixel, expected):
    out = to_rgb(Image.new(mode, (3, 2), pixel))
    assert out.mode == "RGB"
    assert out.size == (3, 2)
    _assert_close(np.asarray(out), np.broadcast_to(expected, (2, 3, 3)), tol=2)


# ---------------------------------------------------------------- bad files


def _expect_error(path, reason):
    with pytest.raises(ImageReadError) as info:
        open_rgb(path)
    err = info.value
    message = str(err)
    assert message.startswith(f"cannot read '{path}': "), message
    assert reason in err.reason and reason in message
    assert err.path == str(path)
    assert "\n" not in message  # one line, fit for a log
    return err


def _noise_image(size=64):
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def test_text_file_with_image_suffix(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not the pixels you are looking for\n")
    _expect_error(path, "not an image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _expect_error(path, "empty")


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nowhere" / "missing.png", "no such file")


@pytest.mark.parametrize(("suffix", "fmt"), [("jpg", "JPEG"), ("png", "PNG")])
def test_truncated_file(tmp_path, suffix, fmt):
    path = tmp_path / f"cut.{suffix}"
    _noise_image().save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "corrupt or truncated")


def test_png_with_damaged_pixel_data(tmp_path):
    path = tmp_path / "damaged.png"
    _noise_image(32).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 40] = bytes(30)  # zero a run of the compressed pixels; the header stays sound
    path.write_bytes(bytes(data))
    _expect_error(path, "corrupt or truncated")


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _header_only_png(width, height):
    """A PNG that is all header: it claims a size and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def test_crafted_header_is_a_valid_png(tmp_path):
    """The crafted file is sound: at a small size PIL reads its header; it only lacks pixel data."""
    path = tmp_path / "small.png"
    path.write_bytes(_header_only_png(4, 3))
    with Image.open(path) as img:
        assert img.size == (4, 3) and img.mode == "RGB"
    _expect_error(path, "corrupt or truncated")


@pytest.mark.parametrize(
    "side",
    [
        30_000,  # 900 MP: past twice PIL's limit, where PIL itself raises
        10_000,  # 100 MP: past the limit but under twice it, where PIL only warns
    ],
)
def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch, side):
    assert side * side > Image.MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_header_only_png(side, side))
    assert path.stat().st_size < 100

    decoded = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    err = _expect_error(path, "decompression bomb")
    assert decoded == []  # refused on open, so no pixel buffer was ever set up
    assert isinstance(err.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning))


def test_bomb_limit_follows_pil_setting(tmp_path, monkeypatch):
    path = tmp_path / "modest.png"
    _noise_image(64).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 32)
    _expect_error(path, "decompression bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)
    assert open_rgb(path).size == (64, 64)


# ---------------------------------------------------------------- EXIF orientation


def _oriented_image(orientation):
    """2 wide, 3 tall, red in the top-left corner and blue elsewhere, tagged with an EXIF orientation."""
    img = Image.new("RGB", (2, 3), (0, 0, 255))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return img, exif


@pytest.mark.parametrize(
    ("orientation", "red_at"),
    [
        (6, (2, 0)),  # rotate 90° clockwise to display: the top-left corner goes to the top-right
        (8, (0, 1)),  # rotate 90° counter-clockwise: the top-left corner goes to the bottom-left
    ],
)
def test_exif_transpose_png(tmp_path, orientation, red_at):
    img, exif = _oriented_image(orientation)
    path = tmp_path / "oriented.png"
    img.save(path, exif=exif)

    kept = open_rgb(path)
    assert kept.size == (2, 3)
    assert kept.getpixel((0, 0)) == (255, 0, 0)

    turned = open_rgb(path, exif_transpose=True)
    assert turned.mode == "RGB"
    assert turned.size == (3, 2)
    assert turned.getpixel(red_at) == (255, 0, 0)
    reds = [(x, y) for x in range(3) for y in range(2) if turned.getpixel((x, y)) == (255, 0, 0)]
    assert reds == [red_at]


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_transpose_jpeg(tmp_path, orientation):
    img, exif = _oriented_image(orientation)
    path = tmp_path / "oriented.jpg"
    img.save(path, exif=exif)
    assert open_rgb(path).size == (2, 3)
    assert open_rgb(path, exif_transpose=True).size == (3, 2)


def test_exif_transpose_without_tag_changes_nothing(tmp_path):
    path = tmp_path / "plain.png"
    img, _ = _oriented_image(1)
    img.save(path)
    out = open_rgb(path, exif_transpose=True)
    assert out.size == (2, 3) and out.getpixel((0, 0)) == (255, 0, 0)


def test_readable_images_yields_the_good_files_and_lists_the_rest_in_order(tmp_path):
    """What predict, predict --onnx, detect and segment read: every readable file, the others as errors."""
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("L", (4, 2), 128).save(rotated, exif=exif)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    plain = tmp_path / "plain.png"
    Image.new("RGBA", (3, 5), (0, 0, 0, 0)).save(plain)
    paths = [tmp_path / "empty.png", rotated, tmp_path / "missing.png", tmp_path / "notes.png", plain]
    errors = []
    read = list(readable_images(paths, errors))
    assert [(path, image.mode, image.size) for path, image in read] == [(str(rotated), "RGB", (2, 4)),
                                                                        (str(plain), "RGB", (3, 5))]
    assert [error.path for error in errors] == [str(tmp_path / name) for name in ("empty.png", "missing.png",
                                                                                  "notes.png")]
    assert all(isinstance(error, ImageReadError) for error in errors)
