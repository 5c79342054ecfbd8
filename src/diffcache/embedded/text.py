"""A word-level text encoder for the embedded models' prompt grammar.

The vocabulary is tiny and fixed (see :mod:`diffcache.embedded.shapes`), so the encoder is a learned word
embedding plus a learned position embedding: ``[B, max_length, embed_dim]``. The empty prompt (all padding)
is the unconditional embedding used by classifier-free guidance.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .shapes import VOCABULARY, tokenize

PAD = "<pad>"


class ShapesTextEncoder(ModelMixin, ConfigMixin):
    """Embeds prompts of the shapes grammar; ``encode(["a red circle moving left", ""])``."""

    @register_to_config
    def __init__(self, vocabulary: tuple[str, ...] = VOCABULARY, max_length: int = 8, embed_dim: int = 64):
        super().__init__()
        self.words = [PAD, *vocabulary]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.word_embedding = nn.Embedding(len(self.words), embed_dim)
        self.position_embedding = nn.Embedding(max_length, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """Word ids, padded to ``max_length``; raises ``PromptError`` for a word outside the vocabulary."""
        ids = torch.zeros(len(prompts), self.config.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = tokenize(prompt)
            if len(words) > self.config.max_length:
                raise ValueError(
                    f"prompt {prompt!r} has {len(words)} words; the embedded text encoder takes at most "
                    f"{self.config.max_length}."
                )
            ids[row, : len(words)] = torch.tensor([self.index[w] for w in words], dtype=torch.long)
        return ids

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.norm(self.word_embedding(input_ids) + self.position_embedding(positions))

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompt embeddings ``[len(prompts), max_length, embed_dim]``."""
        return self(self.token_ids(prompts).to(self.device))
