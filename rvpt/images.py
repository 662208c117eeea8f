"""Encoded image bytes <-> normalised float tensors.

Image bytes are untrusted: a file that is truncated, not an image, or claims more pixels than
`max_pixels` (a decompression bomb) is refused before any pixel is decoded.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from rvpt.errors import BadInput

# OpenAI CLIP normalisation, also what open_clip writes into preprocess_cfg.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


MAX_PIXELS = 50_000_000  # a 7,000 x 7,000 photo; far beyond anything CLIP resizes from
BYTES_PER_PIXEL = 8      # 16-bit RGBA, uncompressed: no image file needs more than this per pixel
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # one channel of 16 or 32 bits, or float


def file_limit(max_pixels: int) -> int:
    """The largest file that can hold an image of `max_pixels`: a bigger one is refused unread."""
    return max_pixels * BYTES_PER_PIXEL + (1 << 20)


def decode(data: bytes | Path, size: int, where: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    return decode_image(data, size, where, max_pixels)[0]


def decode_image(data: bytes | Path, size: int, where: str = "image",
                 max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, bool]:
    """An RGB uint8 array of size x size, and whether it came from a wider (16-bit or float) image.

    A path is opened only when it is a regular file within the size a `max_pixels` image can
    take; either way the header's size is checked before any pixel is decoded. EXIF
    orientation is applied, as photo viewers and torchvision's loaders do.
    """
    try:
        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else _opened(Path(data), max_pixels)
        with warnings.catch_warnings(), source:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > max_pixels:
                    raise ValueError(f"{width} x {height} pixels exceeds the limit of {max_pixels:,}")
                wide = image.mode in WIDE_MODES
                if "exif" in image.info or image.format == "TIFF":  # reading EXIF costs a quarter of a decode
                    image = ImageOps.exif_transpose(image)
                rgb = _eight_bit(image).convert("RGB") if wide else image.convert("RGB")
                return np.asarray(square(rgb, size), dtype=np.uint8), wide
    except Image.UnidentifiedImageError:
        raise BadInput(f"{where}: not an image file") from None
    except (OSError, ValueError, TypeError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise BadInput(f"{where}: not a readable image ({error})") from error


def _opened(path: Path, max_pixels: int):
    info = os.stat(path)  # a FIFO or a device named .jpg would block or never end
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    if info.st_size > file_limit(max_pixels):
        raise ValueError(f"{info.st_size:,} bytes, more than any image of {max_pixels:,} pixels needs")
    return open(path, "rb")


def read_file(path: Path, where: str, max_pixels: int = MAX_PIXELS) -> bytes:
    """A file's bytes, refused unread when it is not a regular file or larger than any image can be."""
    try:
        with _opened(path, max_pixels) as handle:
            return handle.read()
    except (OSError, ValueError) as error:
        raise BadInput(f"{where}: not a readable image ({error})") from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit or float greyscale image scaled to 8 bits ("convert" would clip it to near white)."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise ValueError("float image with values outside [0, 1]")
        scaled = pixels * 255
    else:
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ValueError("32-bit image with values outside 16 bits")
        scaled = pixels / 257
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")


def square(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bicubic), then the centre square: open_clip's eval transform."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(resized, Image.BICUBIC)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


class LazyImages:
    """Encoded images decoded when a batch asks for them: a corpus too large to hold decoded.

    Indexed like the float tensor [N, 3, size, size] in [0, 1] it stands for; an unreadable
    image fails the batch (the download stage has already dropped those it found).
    """

    def __init__(self, blobs, size: int, where: str, max_pixels: int = MAX_PIXELS):
        self.blobs, self.size, self.where, self.max_pixels = blobs, size, where, max_pixels

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        pixels = [decode(self._blob(int(i)), self.size, f"{self.where} row {int(i)}", self.max_pixels)
                  for i in rows]
        return to_unit_tensor(np.stack(pixels))

    def _blob(self, i: int) -> bytes:
        blob = self.blobs[i]
        return blob.as_py() if hasattr(blob, "as_py") else blob


@dataclass
class Decoded:
    """What survived decoding: pixels [M, H, W, 3] of the rows in `kept`, why the rest did not, and
    how many were 16-bit or float images scaled to 8 bits."""
    pixels: np.ndarray
    kept: np.ndarray
    skipped: list[str] = field(default_factory=list)
    scaled: int = 0


def decode_many(blobs: list[bytes] | list[Path], size: int, where: str, max_bad_fraction: float = 0.0,
                max_pixels: int = MAX_PIXELS, names: list[str] | None = None) -> Decoded:
    """Decodes every blob, skipping unreadable ones while they stay within `max_bad_fraction`.

    Past that share (0 refuses any), raises BadInput naming the count and the first culprit.
    Messages name blob i as names[i], or as "<where> row i".
    """
    if not blobs:
        raise BadInput(f"{where}: no images")
    pixels, kept, skipped, scaled = [], [], [], 0
    for i, blob in enumerate(blobs):
        try:
            array, wide = decode_image(blob, size, names[i] if names else f"{where} row {i}", max_pixels)
        except BadInput as error:
            skipped.append(str(error))
            continue
        pixels.append(array)
        kept.append(i)
        scaled += wide
    check_skipped(skipped, len(blobs), max_bad_fraction)
    return Decoded(np.stack(pixels), np.asarray(kept, dtype=np.int64), skipped, scaled)


def check_skipped(skipped: list[str], total: int, max_bad_fraction: float) -> None:
    """BadInput when the unreadable images are over `max_bad_fraction` of `total`, or are all of them."""
    if skipped and (len(skipped) > max_bad_fraction * total or len(skipped) == total):
        raise BadInput(f"{len(skipped)} of {total} images unreadable, over the allowed share "
                       f"{max_bad_fraction:g} (data.max_bad_fraction); first: {skipped[0]}")


def to_unit_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]; triggers act in this space."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255)


def normalize(images: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def to_uint8_image(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] -> PIL image."""
    array = image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def grid(images: torch.Tensor, columns: int = 8, upscale: int = 4) -> Image.Image:
    """Tiles [N, 3, H, W] images in [0, 1] into one picture, enlarged for the eye."""
    n, _, h, w = images.shape
    rows = (n + columns - 1) // columns
    canvas = Image.new("RGB", (columns * w, rows * h))
    for i in range(n):
        canvas.paste(to_uint8_image(images[i]), ((i % columns) * w, (i // columns) * h))
    return canvas.resize((columns * w * upscale, rows * h * upscale), Image.NEAREST)
