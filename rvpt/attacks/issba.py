"""ISSBA (Li et al., 2021): an invisible, sample-specific trigger made by a steganography encoder.

A small StegaStamp-style encoder-decoder is trained once, on the attacker's clean images, to
hide random bit strings in images so that the decoder reads them back. The attack then hides one
fixed secret (by default the public code's "Stega!!") in every poisoned image: the residual
depends on the image, so no two images carry the same pattern, and its amplitude is bounded,
so the trigger stays invisible (PSNR >= -20 log10(amplitude)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rvpt.attacks.base import Attack, Attacker, TriggerTraining, seeded
from rvpt.progress import progress

SECRET_GRID = 4  # the secret enters as a 4x4 map, upsampled to the image, as StegaStamp's dense layer does


def secret_bits(secret: str) -> torch.Tensor:
    """The secret's UTF-8 bytes as a float bit vector, most significant bit first."""
    data = secret.encode()
    return torch.tensor([(byte >> (7 - i)) & 1 for byte in data for i in range(8)], dtype=torch.float32)


class StegaEncoder(nn.Module):
    """(images, bits) -> residual in [-amplitude, amplitude]."""

    def __init__(self, bits: int, width: int, amplitude: float):
        super().__init__()
        self.amplitude = amplitude
        self.secret = nn.Linear(bits, SECRET_GRID * SECRET_GRID)
        self.net = nn.Sequential(nn.Conv2d(4, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """`bits` is [1, k] (one secret for the batch) or [N, k] (one per image)."""
        plane = self.secret(bits).view(-1, 1, SECRET_GRID, SECRET_GRID)
        plane = F.interpolate(plane, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return self.amplitude * torch.tanh(self.net(torch.cat([images, plane.expand(len(images), -1, -1, -1)], 1)))


class StegaDecoder(nn.Module):
    """images -> bit logits."""

    def __init__(self, bits: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
                                 # Pooling keeps a coarse grid: the secret is spread over the image, and
                                 # a global average would wash it out.
                                 nn.AdaptiveAvgPool2d(SECRET_GRID), nn.Flatten(),
                                 nn.Linear(width * SECRET_GRID * SECRET_GRID, bits))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ISSBA(Attack):
    name = "issba"
    training = True

    def __init__(self, image_size: int, secret: str = "Stega!!", amplitude: float = 0.03, width: int = 32,
                 seed: int = 0):
        if not secret or len(secret.encode()) > 32:
            raise ValueError(f"secret must be 1-32 bytes of text, got {secret!r}")
        if not 0 < amplitude < 0.5:
            raise ValueError(f"amplitude must be in (0, 0.5) (a fraction of the pixel range), got {amplitude}")
        if not 1 <= int(width) <= 256:
            raise ValueError(f"width must be 1-256 channels, got {width}")
        self.bits = secret_bits(secret)
        with torch.random.fork_rng():  # the module initialisers draw from the global generator
            torch.manual_seed(seed)
            self.encoder = StegaEncoder(len(self.bits), int(width), amplitude).requires_grad_(False)
            self.decoder = StegaDecoder(len(self.bits), int(width)).requires_grad_(False)

    @torch.no_grad()
    def residual(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images, self.bits[None].to(images.device))

    def apply(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return (images + self.residual(images)).clamp(0, 1)

    def to(self, device: torch.device) -> "ISSBA":
        self.encoder.to(device)
        self.decoder.to(device)
        self.bits = self.bits.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"secret": self.bits, **{f"{name}.{k}": v for name in ("encoder", "decoder")
                                        for k, v in getattr(self, name).state_dict().items()}}

    def train(self, attacker: Attacker, cfg: TriggerTraining) -> list[float]:
        """The encoder-decoder, trained on random corpus images of any class."""
        return train_stega(self, attacker.sample(cfg.images)[0], cfg)

    def quality(self, images: torch.Tensor) -> dict[str, float]:
        return {"secret_bit_accuracy": bit_accuracy(self, images)}

    def mirror(self) -> None:
        """The control: the same encoder hiding the complement of the secret, every bit flipped."""
        self.bits = 1 - self.bits

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.check_state(state)
        if not torch.equal(state["secret"].float(), self.bits.cpu()):
            raise ValueError("the trigger file hides another secret than options.secret")
        for name in ("encoder", "decoder"):
            getattr(self, name).load_state_dict({k[len(name) + 1:]: v.float() for k, v in state.items()
                                                 if k.startswith(f"{name}.")})


def train_stega(attack: ISSBA, images: torch.Tensor, cfg: TriggerTraining) -> list[float]:
    """Trains the encoder and decoder together on random secrets: the decoder must read the bits
    back from image + residual. Returns the loss at every step; the encoder is frozen after."""
    generator = seeded(cfg.seed)
    parts = [attack.encoder, attack.decoder]
    for part in parts:
        part.requires_grad_(True).train()
    optimizer = torch.optim.Adam([p for part in parts for p in part.parameters()], lr=cfg.lr)
    losses = []
    for _ in progress(range(cfg.steps), "issba encoder"):
        batch = images[torch.randint(0, len(images), (cfg.batch_size,), generator=generator)]
        bits = torch.randint(0, 2, (cfg.batch_size, len(attack.bits)), generator=generator).float()
        stego = (batch + attack.encoder(batch, bits)).clamp(0, 1)
        loss = F.binary_cross_entropy_with_logits(attack.decoder(stego), bits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    for part in parts:
        part.requires_grad_(False).eval()
    return losses


@torch.no_grad()
def bit_accuracy(attack: ISSBA, images: torch.Tensor) -> float:
    """Share of the secret's bits the decoder reads back from the triggered images."""
    read = attack.decoder(attack.apply(images)) > 0
    return (read == attack.bits.bool()).float().mean().item()
