"""Deep visual prompts (VPT-deep) for open_clip's VisionTransformer.

`tokens` learnable vectors are inserted right after the CLS token at the input of block
`first_block` (0-based; the paper's D) and replaced by fresh ones at the input of every later
block. The backbone stays frozen and in eval() so patch dropout never fires.
"""
from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from rvpt.checkpoint import read_safetensors


class DeepPrompts(nn.Module):
    """The prompt tensor [blocks, tokens, width], one row of tokens per prompted block."""

    def __init__(self, blocks: int, tokens: int, width: int, init_std: float = 0.02, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(blocks, tokens, width, generator=generator) * init_std)

    @property
    def tokens(self) -> int:
        return self.weight.shape[1]


class PromptedVisionEncoder(nn.Module):
    """Runs a frozen open_clip VisionTransformer with deep prompts on blocks first_block..L-1."""

    def __init__(self, visual: VisionTransformer, prompts: DeepPrompts, first_block: int):
        super().__init__()
        depth = len(visual.transformer.resblocks)
        if not 0 <= first_block < depth:
            raise ValueError(f"first prompted block {first_block} outside 0..{depth - 1}")
        if prompts.weight.shape[0] != depth - first_block:
            raise ValueError(f"{prompts.weight.shape[0]} prompt rows for {depth - first_block} prompted blocks")
        if prompts.weight.shape[2] != visual.class_embedding.shape[-1]:
            raise ValueError(f"prompts of width {prompts.weight.shape[2]} for a {visual.class_embedding.shape[-1]}-wide encoder")
        if prompts.weight.dtype != visual.class_embedding.dtype:
            raise ValueError(f"prompts are {prompts.weight.dtype}, the encoder is {visual.class_embedding.dtype}")
        if not visual.transformer.batch_first:
            raise ValueError("only batch-first transformers are supported")
        self.visual = visual
        self.prompts = prompts
        self.first_block = first_block

    def forward(self, images: torch.Tensor, return_cls: bool = False):
        """Image features [N, embed]; with return_cls, also the CLS token after every prompted block."""
        return self.from_prefix(shared_prefix(self.visual, images, self.first_block), return_cls)

    def block_cls(self, images: torch.Tensor) -> torch.Tensor:
        """The CLS token after every block, unprompted ones included: [N, blocks, width]."""
        x = self.visual._embeds(images)
        before = []
        for block in self.visual.transformer.resblocks[:self.first_block]:
            x = block(x)
            before.append(x[:, :1])
        _, prompted = self.from_prefix(x, return_cls=True)
        return torch.cat([*before, prompted], dim=1)

    def from_prefix(self, x: torch.Tensor, return_cls: bool = False):
        """The prompted blocks and the head, on the token sequence `shared_prefix` returns."""
        b = self.prompts.tokens
        cls_per_block = []
        for i, block in enumerate(self.visual.transformer.resblocks[self.first_block:], self.first_block):
            if b > 0:
                prompt = self.prompts.weight[i - self.first_block].expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], prompt, x[:, 1 if i == self.first_block else 1 + b:]], dim=1)
            x = block(x)
            cls_per_block.append(x[:, 0])
        if b > 0:
            x = torch.cat([x[:, :1], x[:, 1 + b:]], dim=1)
        pooled, _ = self.visual._pool(x)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        if return_cls:
            return pooled, torch.stack(cls_per_block, dim=1)
        return pooled


def shared_prefix(visual: VisionTransformer, images: torch.Tensor, first_block: int) -> torch.Tensor:
    """The token sequence entering block first_block: blocks before it see no prompt, so the
    prompted and the frozen encoder share this part of the pass."""
    x = visual._embeds(images)
    for block in visual.transformer.resblocks[:first_block]:
        x = block(x)
    return x


def frozen_from_prefix(visual: VisionTransformer, x: torch.Tensor, first_block: int) -> torch.Tensor:
    """The unprompted encoder's CLS token after each block from first_block on, [N, blocks, width],
    continuing from `shared_prefix`."""
    out = []
    for block in visual.transformer.resblocks[first_block:]:
        x = block(x)
        out.append(x[:, 0])
    return torch.stack(out, dim=1)


def frozen_block_cls(visual: VisionTransformer, images: torch.Tensor, first_block: int) -> torch.Tensor:
    """The unprompted encoder's CLS token after each block from first_block on: [N, blocks, width]."""
    return frozen_from_prefix(visual, shared_prefix(visual, images, first_block), first_block)


def save_prompts(path, prompts: DeepPrompts, first_block: int, metadata: dict[str, str] | None = None) -> None:
    """The prompts alone, as safetensors; what they plug into is recorded in the metadata."""
    from safetensors.torch import save_file

    meta = {"first_block": str(first_block), **{k: str(v) for k, v in (metadata or {}).items()}}
    save_file({"prompts": prompts.weight.detach().contiguous().cpu()}, str(path), metadata=meta)


def load_prompts(path) -> tuple[DeepPrompts, int, dict[str, str]]:
    tensors, metadata = read_safetensors(path)
    weight = tensors.get("prompts")
    if weight is None or weight.ndim != 3 or not metadata.get("first_block", "").isdigit():
        raise ValueError(f"{path}: not an rvpt prompts file (need a [blocks, tokens, width] 'prompts' tensor "
                         f"and first_block metadata)")
    prompts = DeepPrompts(weight.shape[0], weight.shape[1], weight.shape[2])
    prompts.weight.data = weight.clone()
    return prompts, int(metadata["first_block"]), metadata


def attach_prompts(model, path):
    """Makes an open_clip CLIP encode images with saved prompts (e.g. a model `rvpt defend` wrote).

    open_clip cannot express deep prompts in its own weights, so the defended model is the
    open_clip model plus this call: afterwards `model.encode_image` runs the prompted encoder.
    """
    prompts, first_block, _ = load_prompts(path)
    model.visual = PromptedVisionEncoder(model.visual, prompts, first_block).eval()
    return model
