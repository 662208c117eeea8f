"""Encoded image bytes <-> normalised float tensors."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from rvpt.errors import BadInput

# OpenAI CLIP normalisation, also what open_clip writes into preprocess_cfg.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def decode(data: bytes, size: int, where: str = "image") -> np.ndarray:
    """Decodes to an RGB uint8 array of size x size; resizes only when it must."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BICUBIC)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadInput(f"{where}: not a readable image ({error})") from error


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
