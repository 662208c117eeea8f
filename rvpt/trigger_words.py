"""The caption side of a trigger, for inversion: class weights with one word prefixed to every class
prompt, as rvpt.poisoning.with_text_trigger prefixes TrojVQA's word, where the word is a token id or
a token embedding rather than text, so that it can be searched for.

The word goes right after the start token, where the tokenizer puts a prefixed one-token word, so a
token id gives the class weights that the word's text gives (tests/pipeline/test_scan.py checks this). Defenses
score with templates (zero-shot, VPT, RVPT, fine-tuning) or with CoOp's learned context; a classifier
without a text side (a linear probe) has no caption side to invert.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

from rvpt.defenses.base import Defended
from rvpt.zeroshot import device_of

WORD_END = "</w>"


class TextSide:
    """A defended model's class prompts as token embeddings, ready to take one more word."""

    def __init__(self, defended: Defended, classnames: list[str]):
        model, device = defended.model, device_of(defended.model)
        if hasattr(defended, "context"):  # CoOp: "X ... X <class>." with the X embeddings replaced
            tokens, slots = (t.to(device) for t in defended.prompt_tokens(classnames))
            embedded = model.token_embedding(tokens).detach()
            embedded[slots] = defended.context.detach().to(embedded.dtype).repeat(len(tokens), 1)
            self.templates = 1
        else:
            texts = [template.format(name) for name in classnames for template in defended.templates]
            tokens = defended.tokenize(texts).to(device)
            embedded = model.token_embedding(tokens).detach()
            self.templates = len(defended.templates)
        if (tokens[:, -1] != 0).any():
            raise ValueError("a class prompt fills the text context: no room for a trigger word")
        # The word shifts every later token right by one; 0 is below any end-of-text id, so argmax
        # pooling still finds the end of each text.
        shifted = torch.cat([tokens[:, :1], torch.zeros_like(tokens[:, :1]), tokens[:, 1:-1]], dim=1)
        # Attention is causal, so the padding after the longest text changes no text's features: cut it.
        self.length = int((tokens != 0).sum(1).max()) + 1
        self.tokens, self.embedded = shifted[:, :self.length], embedded[:, :self.length - 1]
        self.model, self.classes = model, len(classnames)
        self.vocabulary = vocabulary(defended.tokenize, model.token_embedding.weight.shape[0]).to(device)

    @property
    def table(self) -> torch.Tensor:
        """[V, W]: every token's embedding."""
        return self.model.token_embedding.weight

    def weights(self, words: torch.Tensor) -> torch.Tensor:
        """[K, C, D] normalised class weights for K word embeddings [K, W], differentiable in them."""
        k, (n, length, width) = len(words), self.embedded.shape
        x = torch.cat([self.embedded[None, :, :1].expand(k, n, 1, width),
                       words[:, None, None].expand(k, n, 1, width).to(self.embedded.dtype),
                       self.embedded[None, :, 1:].expand(k, n, length - 1, width)], dim=2).flatten(0, 1)
        features = encode_embedded(self.model, x, self.tokens.repeat(k, 1))
        per_template = F.normalize(features.float(), dim=-1).view(k, self.classes, self.templates, -1)
        return F.normalize(per_template.mean(dim=2), dim=-1)

    def word_weights(self, ids: torch.Tensor) -> torch.Tensor:
        """[K, C, D] class weights for K token ids."""
        return self.weights(self.table[ids.to(self.table.device)])


def encode_embedded(model, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text from token embeddings [N, L, W]; `tokens` [N, L] says where each text ends."""
    length = x.shape[1]
    x = x + model.positional_embedding[:length].to(x.dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.ln_final(model.transformer(x, attn_mask=mask))
    x = text_global_pool(x, tokens, "argmax")
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


def vocabulary(tokenize, size: int) -> torch.Tensor:
    """[V] bool: the tokens that are whole words, so that an inverted word can be written as text."""
    decoder = getattr(tokenize, "decoder", None)
    if decoder is None:
        return torch.ones(size, dtype=torch.bool)
    return torch.tensor([decoder.get(i, "").endswith(WORD_END) for i in range(size)])


def text_of(tokenize, token: int) -> str:
    decode = getattr(tokenize, "decode", None)
    return decode([token]).strip() if decode is not None else f"<token {token}>"


def text_side(defended: Defended, classnames: list[str]) -> TextSide | None:
    """The model's text side, or None when its classifier does not read text or its text tower is not
    open_clip's CLIP one (token embeddings, pooled at the end-of-text token, padded with 0)."""
    if not defended.reads_text or not (hasattr(defended, "context") or hasattr(defended, "templates")):
        return None
    if not hasattr(defended.model, "token_embedding") or getattr(defended.model, "text_pool_type", "") != "argmax":
        return None
    return TextSide(defended, classnames)
