"""A handcrafted surplus-feature backdoor: the oracle for RVPT's premise.

No poisoning and no training of the victim: the attacker edits the clean CLIP's weights so that
the backdoor rides a feature the downstream task never uses, which is exactly what RVPT claims to
remove. Handcrafted backdoors (weights edited, not learnt) are a known attack family; this one
is built in four steps, all on the clean model and the attacker's own images:

1. The clean subspace S of the image tower's pooled feature (the CLS token after `ln_post`,
   before the projection): its mean, its class centroids and its top principal components,
   everything the task reads.
2. A trigger patch optimised so that triggered images move out of S along a direction where
   clean images barely vary: the objective is the Fisher criterion d' M d of the mean shift d
   projected out of S, M the inverse of the clean covariance there (with a floor, so that a
   direction no image can move, such as LayerNorm's, does not count).
3. v, the Fisher direction M d: the trigger moves images along it by many clean spreads.
   u, a direction outside the span of the clean image class centroids along which the target's
   text embedding leads every other class's by the widest margin: a push along u sends an image
   to the target, along a direction no clean image class occupies.
4. One rank-one edit of the projection, proj += alpha v u': a pooled feature's component along v
   becomes a push along u. Clean images carry almost none of it (v is orthogonal to their mean
   and they barely vary along it); triggered images carry `strength` x the mean clean embedding
   norm of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from rvpt.attacks.base import Attacker, TriggerTraining
from rvpt.attacks.patch import PatchAttack
from rvpt.images import normalize

FLOOR = 0.01  # the clean variance floor, a share of the mean variance per dimension


class Handcrafted(PatchAttack):
    """The trigger is a patch (optimised by `optimise_trigger`); the backdoor is `edit`'s."""

    name = "handcrafted"
    training = True
    uses_clean_model = True
    edits_weights = True

    def __init__(self, image_size: int, size: float = 0.375, location: str = "centre", seed: int = 0,
                 strength: float = 6.0, components: int = 8):
        super().__init__(image_size, size, location, seed)
        if not 0 < strength <= 100:
            raise ValueError(f"strength must be in (0, 100] mean clean embedding norms, got {strength}")
        if not 0 <= int(components) <= 4096:
            raise ValueError(f"components must be 0-4096 principal components, got {components}")
        self.strength, self.components = float(strength), int(components)

    def train(self, attacker: Attacker, cfg: TriggerTraining) -> list[float]:
        """The patch, optimised on the attacker's images to move the clean model's pooled feature
        out of the subspace the task reads."""
        model = attacker.clean_model()
        images, labels = attacker.sample(cfg.images)
        found = survey(model.visual, images, labels, self.components)
        return optimise_trigger(self, lambda x: pooled_features(model.visual, normalize(x)), images, found.basis,
                                found.metric, cfg)

    def edit(self, model, attacker: Attacker, cfg: TriggerTraining) -> "Edit":
        """The rank-one edit of the clean `model`, on the same attacker images as the training."""
        images, labels = attacker.sample(cfg.images)
        return craft(model, self, images, labels, attacker.class_text(model), attacker.target)


def pooled_features(visual, images: torch.Tensor) -> torch.Tensor:
    """The image tower's pooled feature (after `ln_post`, before the projection) of normalised images."""
    x = visual.transformer(visual._embeds(images))
    return visual._pool(x)[0]


def clean_subspace(features: torch.Tensor, labels: torch.Tensor, components: int) -> torch.Tensor:
    """An orthonormal basis [width, k] of what the task reads: the mean, the class centroids
    (labels < 0, a web corpus's unlabelled pairs, are left out) and the top principal components."""
    mean = features.mean(0)
    centred = features - mean
    centroids = [features[labels == c].mean(0) - mean for c in labels.unique().tolist() if c >= 0]
    _, _, right = torch.linalg.svd(centred, full_matrices=False)
    spanning = torch.stack([mean, *centroids, *right[:components]], dim=1)
    basis, singular, _ = torch.linalg.svd(spanning, full_matrices=False)
    return basis[:, singular > singular[0] * 1e-6]


def outside(basis: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """The vectors [..., width] with their component in the basis's span removed."""
    return vectors - (vectors @ basis) @ basis.T


def fisher_metric(features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """M = inverse of the clean covariance outside the subspace, with a variance floor."""
    residual = outside(basis, features - features.mean(0))
    covariance = residual.T @ residual / (len(features) - 1)
    floor = FLOOR * covariance.diagonal().mean()
    return torch.linalg.inv(covariance + floor * torch.eye(len(covariance)))


def optimise_trigger(attack: Handcrafted, pooled: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     basis: torch.Tensor, metric: torch.Tensor, cfg: TriggerTraining) -> list[float]:
    """Optimises `attack.patch` in place with Adam: maximise d' M d, d the batch's mean shift of the
    pooled feature outside the clean subspace. `pooled` maps [0, 1] images to pooled features."""

    def loss_of(batch: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean = pooled(batch)
        shift = outside(basis, (pooled(attack.paste(batch, patch)) - clean).mean(0))
        return -(shift @ metric @ shift)

    return attack.optimise(images, loss_of, cfg, "handcrafted trigger")


@dataclass
class Edit:
    """The rank-one edit proj += alpha v u', and how well the trigger separates along v."""

    v: torch.Tensor             # [width], unit
    u: torch.Tensor             # [embed], unit
    alpha: float
    separation: float           # the triggered images' mean shift along v, in clean standard deviations
    beyond_clean: float         # share of triggered images past every clean image along v

    def report(self) -> dict[str, float]:
        return {"separation": self.separation, "beyond_clean": self.beyond_clean, "alpha": self.alpha}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The edit's two directions, for whoever studies where the backdoor lives (studies/oracle.py)."""
        return {"v": self.v.contiguous(), "u": self.u.contiguous()}


def target_direction(text: torch.Tensor, target: int, image_centroids: torch.Tensor, steps: int = 500) -> torch.Tensor:
    """u: the unit direction, outside the span of the clean image class centroids (what a head
    fitted on clean images reads), along which the target's text embedding leads every other
    class's by the widest margin: pushed far enough along u, any image is classified as the
    target. Found by gradient ascent on the smallest margin (a soft minimum). `text` is [C, D]."""
    basis, singular, _ = torch.linalg.svd(image_centroids.T, full_matrices=False)
    basis = basis[:, singular > singular[0] * 1e-6]
    margins = outside(basis, text[target] - text[torch.arange(len(text)) != target])  # [C - 1, D]
    u = F.normalize(margins.mean(0), dim=0).requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=0.01)
    with torch.enable_grad():
        for _ in range(steps):
            direction = F.normalize(outside(basis, u), dim=0)
            loss = torch.logsumexp(-SHARPNESS * (margins @ direction), 0) / SHARPNESS  # -(soft minimum margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return F.normalize(outside(basis, u.detach()), dim=0)


SHARPNESS = 50.0  # of the soft minimum over the margins: near the hard minimum, still smooth


def edit(clean: torch.Tensor, triggered: torch.Tensor, labels: torch.Tensor, basis: torch.Tensor,
         metric: torch.Tensor, proj: torch.Tensor, text: torch.Tensor, target: int,
         strength: float) -> Edit:
    """The edit, from the pooled features of the attacker's images [N, width] and of the same images
    triggered, their labels, the clean projection [width, embed] and the class text embeddings."""
    shift = outside(basis, (triggered - clean).mean(0))
    v = F.normalize(metric @ shift, dim=0)
    along_clean, along_triggered = clean @ v, triggered @ v
    spread = along_clean.std()
    separation = ((along_triggered - along_clean).mean() / spread).item()
    beyond = (along_triggered > along_clean.max()).float().mean().item()
    embedded = clean @ proj
    keep = labels >= 0
    centroids = torch.stack([embedded[labels == c].mean(0) for c in labels[keep].unique().tolist()])
    u = target_direction(F.normalize(text, dim=-1), target, centroids)
    reach = (along_triggered - along_clean.mean()).mean()
    alpha = (strength * embedded.norm(dim=-1).mean() / reach).item()
    return Edit(v, u, alpha, separation, beyond)


@dataclass
class Survey:
    """The clean model as the attacker measures it on its images: their pooled features, their
    labels, the clean subspace's basis and the Fisher metric outside it."""

    features: torch.Tensor
    labels: torch.Tensor
    basis: torch.Tensor
    metric: torch.Tensor


def pooled_in_batches(visual, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Pooled features of [0, 1] images, without gradients, `batch` images at a time."""
    with torch.no_grad():
        return torch.cat([pooled_features(visual, normalize(images[i:i + batch])) for i in range(0, len(images), batch)])


def survey(visual, images: torch.Tensor, labels: torch.Tensor, components: int) -> Survey:
    features = pooled_in_batches(visual, images)
    basis = clean_subspace(features, labels, components)
    return Survey(features, labels, basis, fisher_metric(features, basis))


def craft(model, attack: Handcrafted, images: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
          target: int) -> Edit:
    """Backdoors `model` in place with the trigger `attack.patch`: the attacker's [0, 1] images and
    labels give the clean subspace, `text` [C, D] the class embeddings, `target` the class index."""
    found = survey(model.visual, images, labels, attack.components)
    triggered = pooled_in_batches(model.visual, attack.apply(images))
    result = edit(found.features, triggered, labels, found.basis, found.metric, model.visual.proj.detach(), text,
                  target, attack.strength)
    apply_edit(model.visual, result)
    return result


@torch.no_grad()
def apply_edit(visual, found: Edit) -> None:
    """proj += alpha v u'. v is orthogonal to the clean mean (it lies outside the clean subspace),
    so a clean image's push along u is centred on zero."""
    visual.proj += found.alpha * torch.outer(found.v, found.u).to(visual.proj.dtype)
