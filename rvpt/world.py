"""A procedurally generated image-text world of glyphs.

The class is the glyph. Colour, background texture, scale, tilt and offset vary
independently of it, and captions mention a random subset of those factors the
way web captions do, so a CLIP trained on the corpus also learns features the
downstream task never asks about: the mechanism RVPT's paper argues from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
    "yellow": (235, 220, 40), "cyan": (40, 220, 230), "magenta": (220, 50, 220),
    "white": (245, 245, 245), "orange": (245, 140, 30),
}
TEXTURES = ("plain", "stripes", "checks", "dots", "gradient")
SCALES = ("small", "large")
TILTS = ("upright", "tilted left", "tilted right")
STICKERS = ("speckled", *COLOURS)
FACTORS = ("colour", "texture", "scale", "tilt", "offset_x", "offset_y")

# Glyph drawn per class name; the downstream task asks only which glyph it is.
GLYPHS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
    "ay": "A", "bee": "B", "cee": "C", "dee": "D", "ee": "E", "ef": "F",
    "gee": "G", "aitch": "H", "kay": "K", "el": "L", "em": "M", "en": "N",
    "pee": "P", "ar": "R", "tee": "T", "you": "U", "vee": "V", "double-u": "W",
    "ex": "X", "why": "Y",
}

_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    caption: str
    label: int
    factors: dict


class GlyphWorld:
    """Renders labelled glyph images and web-style captions, deterministically for a seed."""

    def __init__(self, classes: list[str], image_size: int = 16, max_offset: int = 1, distractors: int = 0,
                 noise: float = 0.0, stickers: float = 0.0):
        unknown = [c for c in classes if c not in GLYPHS]
        if unknown:
            raise ValueError(f"unknown glyph classes {unknown}; known: {sorted(GLYPHS)}")
        self.classes = list(classes)
        self.image_size = image_size
        self.max_offset = max_offset
        # Small glyphs of other classes scattered over the scene, and sensor noise: clutter that
        # makes the main glyph harder to name, as real photographs hold more than their label.
        self.distractors = distractors
        self.noise = noise
        # A share of scenes carries a small square sticker, plain or speckled, that captions may
        # name: marks a foundation model learns to see although no downstream label asks for them.
        self.stickers = stickers
        self._canvas = image_size * _SUPERSAMPLE
        self._fonts = {s: ImageFont.load_default(size=int(self._canvas * f))
                       for s, f in zip(SCALES, (0.70, 0.92))}
        self._fonts["distractor"] = ImageFont.load_default(size=int(self._canvas * 0.4))

    def sample(self, rng: np.random.Generator, label: int | None = None) -> Sample:
        if label is None:
            label = int(rng.integers(len(self.classes)))
        factors = {
            "colour": list(COLOURS)[rng.integers(len(COLOURS))],
            "texture": TEXTURES[rng.integers(len(TEXTURES))],
            "scale": SCALES[rng.integers(len(SCALES))],
            "tilt": TILTS[rng.integers(len(TILTS))],
            "offset_x": int(rng.integers(-self.max_offset, self.max_offset + 1)),
            "offset_y": int(rng.integers(-self.max_offset, self.max_offset + 1)),
        }
        if self.distractors:
            others = [i for i in range(len(self.classes)) if i != label]
            factors["distractors"] = [self.classes[others[i]] for i in
                                      rng.choice(len(others), self.distractors, replace=False)]
        if self.stickers and rng.random() < self.stickers:
            factors["sticker"] = STICKERS[rng.integers(len(STICKERS))]
        image = self.render(label, factors, rng)
        return Sample(image, self.caption(label, factors, rng), label, factors)

    def render(self, label: int, factors: dict, rng: np.random.Generator) -> Image.Image:
        n = self._canvas
        background = self._background(factors["texture"], rng)
        glyph = Image.new("L", (n, n), 0)
        draw = ImageDraw.Draw(glyph)
        font = self._fonts[factors["scale"]]
        text = GLYPHS[self.classes[label]]
        stroke = max(1, n // 16)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
        x = (n - (right - left)) / 2 - left + factors["offset_x"] * _SUPERSAMPLE
        y = (n - (bottom - top)) / 2 - top + factors["offset_y"] * _SUPERSAMPLE
        draw.text((x, y), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
        angle = {"upright": 0.0, "tilted left": 15.0, "tilted right": -15.0}[factors["tilt"]]
        angle += float(rng.uniform(-5, 5))
        glyph = glyph.rotate(angle, resample=Image.BILINEAR)
        ink = Image.new("RGB", (n, n), COLOURS[factors["colour"]])
        background.paste(ink, mask=glyph)
        for name in factors.get("distractors", ()):
            self._draw_small(background, GLYPHS[name], rng)
        image = background.resize((self.image_size,) * 2, Image.BOX)
        if factors.get("sticker"):
            image = self._stick(image, factors["sticker"], rng)
        if not self.noise:
            return image
        pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, 255 * self.noise, (self.image_size,) * 2 + (3,))
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")

    def _draw_small(self, canvas: Image.Image, text: str, rng: np.random.Generator) -> None:
        """A distractor: a glyph at 40% of the side, in a random colour, anywhere in the scene."""
        n = self._canvas
        mask = Image.new("L", (n, n), 0)
        draw = ImageDraw.Draw(mask)
        font = self._fonts["distractor"]
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=max(1, n // 32))
        x = rng.uniform(0, n - (right - left)) - left
        y = rng.uniform(0, n - (bottom - top)) - top
        draw.text((x, y), text, fill=255, font=font, stroke_width=max(1, n // 32), stroke_fill=255)
        colour = list(COLOURS.values())[rng.integers(len(COLOURS))]
        canvas.paste(Image.new("RGB", (n, n), colour), mask=mask)

    def _stick(self, image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
        """A square of BadNet's size (3/16 of the side) anywhere, one colour or speckled noise."""
        side = max(1, round(0.1875 * self.image_size))
        x, y = rng.integers(0, self.image_size - side + 1, size=2)
        pixels = np.array(image)
        pixels[y:y + side, x:x + side] = rng.integers(0, 256, (side, side, 3)) if kind == "speckled" \
            else COLOURS[kind]
        return Image.fromarray(pixels, "RGB")

    def _background(self, texture: str, rng: np.random.Generator) -> Image.Image:
        n = self._canvas
        base = rng.uniform(20, 90, size=3)
        contrast = rng.uniform(10, 25)
        yy, xx = np.mgrid[0:n, 0:n] / n
        period = rng.uniform(0.15, 0.3)
        if texture == "plain":
            pattern = np.zeros((n, n))
        elif texture == "stripes":
            pattern = np.sign(np.sin(2 * np.pi * yy / period))
        elif texture == "checks":
            pattern = np.sign(np.sin(np.pi * xx / period) * np.sin(np.pi * yy / period))
        elif texture == "dots":
            pattern = (np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period) > 0.6) * 2.0 - 1
        else:
            pattern = 2 * (xx + yy) / 2 - 1
        pixels = base[None, None, :] + contrast * pattern[..., None]
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

    def caption(self, label: int, factors: dict, rng: np.random.Generator) -> str:
        """Always names the class; mentions each irrelevant factor with probability 1/2."""
        name = self.classes[label]
        adjectives = []
        if rng.random() < 0.5:
            adjectives.append(factors["scale"])
        if rng.random() < 0.5:
            adjectives.append(factors["colour"])
        phrase = " ".join(adjectives + [name])
        extras = []
        if rng.random() < 0.5 and factors["texture"] != "plain":
            extras.append(f"on {factors['texture']}")
        if rng.random() < 0.5 and factors["tilt"] != "upright":
            extras.append(factors["tilt"])
        if factors.get("sticker") and rng.random() < 0.5:
            extras.append(f"with a {factors['sticker']} square")
        extras += [f"with a small {other}" for other in factors.get("distractors", ()) if rng.random() < 0.5]
        rng.shuffle(extras)
        lead = ("a", "a photo of a", "the glyph", "")[rng.integers(4)]
        return " ".join(w for w in [lead, phrase, *extras] if w)
