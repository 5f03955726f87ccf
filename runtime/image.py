"""Images in, model input out: reading files and the preprocessing a `ModelMeta` describes.

An image file is checked before it is decoded: its size on disk, and the width and height
its header states (`image_size`), so that a 1 MB PNG of 30000x30000 pixels is refused
instead of decoded into 2.7 GB.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import cv2
import numpy as np

from edgepilot.errors import InputError
from edgepilot.meta import ModelMeta

__all__ = ["read_image", "check_image", "image_size", "resize", "mnist_style", "preprocess",
           "MAX_IMAGE_PIXELS", "MAX_IMAGE_BYTES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

#: Largest image read or accepted (pixels): 50 megapixels, e.g. 8660x5773, is 143 MiB as
#: 8-bit RGB. Phone cameras write 12 to 48.
MAX_IMAGE_PIXELS = 50_000_000
#: Largest image file read (bytes).
MAX_IMAGE_BYTES = 256 << 20


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Raises:
        InputError: the file is missing, larger than MAX_IMAGE_BYTES, states more than
            MAX_IMAGE_PIXELS in its header, or is not an image OpenCV can decode.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"'{path}' is a folder, not an image: give image files, e.g. "
                         f"{path / '*.jpg'}")
    if not path.is_file():
        raise InputError(f"Image file not found: '{path}'")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise InputError(f"'{path}' is {size:,} bytes; images up to {MAX_IMAGE_BYTES:,} bytes "
                         "are read. Resize or recompress it.")
    # imdecode from bytes handles non-ASCII paths, which cv2.imread does not on every platform.
    data = np.fromfile(str(path), dtype=np.uint8)
    undecodable = InputError(f"Cannot decode '{path}' as an image ({data.size} bytes). "
                             f"Use an image file such as {', '.join(IMAGE_SUFFIXES[:4])}")
    # A format whose header states no size (or one edgepilot does not read: JPEG 2000, EXR)
    # never reaches the decoder, which would allocate whatever the file claims.
    dims = image_size(data[:1 << 20].tobytes()) if data.size else None
    if dims is None:
        raise undecodable
    width, height = dims
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"'{path}' is {width}x{height} pixels, more than the "
                         f"{MAX_IMAGE_PIXELS:,} edgepilot decodes. Resize it first.")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.ndim != 3 or image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise undecodable
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # (H, W, 3) uint8 RGB, in place


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) an image file's header states, from its first bytes (1 MiB suffices
    for every format here), or None for an unknown format or a truncated header.

    Example:
        >>> image_size(open("photo.png", "rb").read(65536))
        (640, 480)
    """
    try:
        for signature, reader in _HEADERS:
            if re.match(signature, head, re.DOTALL):
                dims = reader(head)
                return dims if dims and min(dims) > 0 else None
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _png(h: bytes):
    return struct.unpack(">II", h[16:24])


def _gif(h: bytes):
    return struct.unpack("<HH", h[6:10])


def _bmp(h: bytes):
    if struct.unpack("<I", h[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", h[18:22])
    width, height = struct.unpack("<ii", h[18:26])
    return abs(width), abs(height)  # a negative height means top-down rows


def _jpeg(h: bytes):
    pos = 2
    while pos + 4 <= len(h):
        if h[pos] != 0xFF:
            return None
        marker = h[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        length = struct.unpack(">H", h[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack(">HH", h[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def _webp(h: bytes):
    chunk = h[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", h[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", h[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return (int.from_bytes(h[24:27], "little") + 1, int.from_bytes(h[27:30], "little") + 1)
    return None


def _tiff(h: bytes):
    order = "<" if h[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", h[4:8])
    (count,) = struct.unpack(order + "H", h[ifd:ifd + 2])
    sizes = {}
    for i in range(count):
        tag, kind, _, value = struct.unpack(order + "HHI4s", h[ifd + 2 + 12 * i:ifd + 14 + 12 * i])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            sizes[tag] = struct.unpack(order + ("H" if kind == 3 else "I"),
                                       value[:2 if kind == 3 else 4])[0]
    return (sizes[256], sizes[257]) if len(sizes) == 2 else None


def _pnm(h: bytes):
    if h[:2] == b"P7":  # PAM: WIDTH and HEIGHT lines
        fields = dict(re.findall(rb"^(WIDTH|HEIGHT)\s+(\d+)", h[:4096], re.MULTILINE))
        return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    text = re.sub(rb"#[^\n]*", b" ", h[2:4096])  # comments may sit between the numbers
    width, height = text.split()[:2]
    return int(width), int(height)


def _sun_raster(h: bytes):
    return struct.unpack(">II", h[4:12])


def _radiance(h: bytes):
    found = re.search(rb"\n\n([-+])Y (\d+) ([-+])X (\d+)", h[:65536])
    return (int(found[4]), int(found[2])) if found else None


def _avif(h: bytes):
    # ISO-BMFF: every image item has an 'ispe' property (version+flags, width, height).
    sizes = [struct.unpack(">II", h[m.end() + 4:m.end() + 12]) for m in re.finditer(b"ispe", h)]
    return max(sizes, key=lambda s: s[0] * s[1]) if sizes else None


# (signature regex, header reader), checked in order.
_HEADERS = (
    (rb"\x89PNG\r\n\x1a\n....IHDR", _png),
    (rb"\xff\xd8", _jpeg),
    (rb"BM", _bmp),
    (rb"GIF8[79]a", _gif),
    (rb"RIFF....WEBP", _webp),
    (rb"II\*\x00|MM\x00\*", _tiff),
    (rb"....ftyp(avif|avis)", _avif),
    (rb"P[1-7]\s|P[Ff]\s", _pnm),
    (rb"\x59\xa6\x6a\x95", _sun_raster),
    (rb"#\?(RADIANCE|RGBE)", _radiance),
)


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an RGB image array and return it as (H, W, 3) uint8.

    A (H, W) or (H, W, 1) grey image is accepted and repeated to three channels.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"Expected an image as a numpy array or a file path, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        hint = (
            " If it holds 0..1 floats, pass (image * 255).round().astype(np.uint8)."
            if np.issubdtype(image.dtype, np.floating)
            else " Convert it with image.astype(np.uint8) if its values are 0..255."
        )
        raise InputError(
            f"Expected a uint8 image with values 0..255, got dtype {image.dtype}.{hint}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(
            f"Expected an image of shape (H, W, 3) RGB, got shape {image.shape}. "
            "Pass one image at a time, channels last."
        )
    if image.shape[2] == 4:
        raise InputError(
            "Got a 4-channel (RGBA) image; the model takes RGB. Drop alpha with image[..., :3]."
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"Image of shape {image.shape} is too small to resize")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise InputError(f"Image of shape {image.shape} has more than {MAX_IMAGE_PIXELS:,} "
                         "pixels; resize it first")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) to `size` = (height, width), the runtime's way (training uses it too)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    # INTER_AREA averages when shrinking (no aliasing); linear is the better choice to enlarge.
    shrinking = image.shape[0] > height or image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def mnist_style(image: np.ndarray) -> np.ndarray:
    """A digit photo or scan -> (28, 28, 1) uint8 the way MNIST was made: grey, bright ink on
    black (inverted when the paper is lighter than the ink), the ink's bounding box fitted into
    20x20 keeping its aspect, centred by centre of mass in 28x28."""
    grey = cv2.cvtColor(check_image(image), cv2.COLOR_RGB2GRAY)
    if np.median(grey) > 127:  # dark ink on light paper
        grey = 255 - grey
    grey = np.where(grey >= max(40, 0.3 * int(grey.max())), grey, 0).astype(np.uint8)
    ys, xs = np.nonzero(grey)
    out = np.zeros((28, 28), np.uint8)
    if not len(ys):
        return out[:, :, None]
    crop = grey[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    scale = 20 / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    digit = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else
                       cv2.INTER_LINEAR)
    mass = digit.astype(np.float64)
    total = mass.sum() or 1.0
    cy = (mass.sum(1) * np.arange(h)).sum() / total
    cx = (mass.sum(0) * np.arange(w)).sum() / total
    top = int(np.clip(round(14 - cy), 0, 28 - h))
    left = int(np.clip(round(14 - cx), 0, 28 - w))
    out[top:top + h, left:left + w] = digit
    return out[:, :, None]


def preprocess(image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> float32 model input of batch one, as `meta` describes."""
    if not meta.is_image:
        raise InputError(f"{meta.name} takes a feature vector, not an image: use "
                         "Model.predict_inputs(values)")
    if meta.preprocess == "mnist":
        image = mnist_style(image)  # (28, 28, 1), already grey
        if meta.input_size != (28, 28):
            image = resize(image, meta.input_size)[:, :, None]
        return _normalise(image, meta)
    image = resize(check_image(image), meta.input_size)
    if meta.color == "BGR":
        image = image[:, :, ::-1]
    elif meta.color == "GRAY":
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    return _normalise(image, meta)


def _normalise(image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """(h, w, c) uint8 -> (1, ...) float32 in the layout of `meta`."""
    x = image.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)  # (h, w, c)
    if meta.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    elif meta.layout == "NC":
        x = x.reshape(-1)
    return np.ascontiguousarray(x[None])  # (1, ...) float32
