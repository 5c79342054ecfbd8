"""A model family defined outside the package — a small DiT in this file — works with the step- and block-level
methods once one adapter is registered with ``diffcache.register_adapter``; nothing inside ``src/`` knows it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

import diffcache
from diffcache.adapters import Adapter, AttentionRoles, BlockStack, ModulatedInput, SplitBlocks
from diffcache.errors import NothingSkippedWarning, UnsupportedModelError


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """``x += attn(modulate(norm1 x))``; ``x += cross(norm2 x, text)``; ``x += ff(norm3 x)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.attn, self.cross = Attention(dim), Attention(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.modulation = nn.Linear(dim, 2 * dim)

    def forward(self, hidden_states, encoder_hidden_states, temb):
        shift, scale = self.modulation(temb)[:, None].chunk(2, dim=-1)
        x = hidden_states + self.attn(self.norm1(hidden_states) * (1 + scale) + shift)
        x = x + self.cross(self.norm2(x), encoder_hidden_states)
        return x + self.ff(self.norm3(x))


class TinyDiT(ModelMixin, ConfigMixin):
    """Latents ``[B, C, H, W]`` → one token per pixel → blocks → velocity of the same shape."""

    @register_to_config
    def __init__(self, channels: int = 4, dim: int = 32, layers: int = 3, text_dim: int = 8):
        super().__init__()
        self.proj_in, self.proj_out = nn.Linear(channels, dim), nn.Linear(dim, channels)
        self.text_proj, self.time_proj = nn.Linear(text_dim, dim), nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        b, c, h, w = hidden_states.shape
        x = self.proj_in(hidden_states.flatten(2).transpose(1, 2))
        half = self.config.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
        angles = timestep.float()[:, None] * freqs[None]
        temb = self.time_proj(torch.cat([angles.sin(), angles.cos()], dim=-1))
        text = self.text_proj(encoder_hidden_states)
        for block in self.blocks:
            x = block(x, text, temb)
        return self.proj_out(x).transpose(1, 2).reshape(b, c, h, w)


@diffcache.register_adapter
class TinyDiTAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput):
    family = "TinyDiT"
    model_classes = ("TinyDiT",)
    examples = "the test's own model"

    def blocks(self, model):
        return list(model.blocks)

    def split_module(self, block):
        return block.norm2  # its input is the state after self-attention

    def attention_modules(self, block):
        return {"self": block.attn, "cross": block.cross}
    # modulated_input: the default reads the block's ``temb`` argument


STEPS = 12


def sample(model, seed: int = 0):
    """Flow-matching Euler with no pipeline: diffcache finds the step from the timestep changes."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 6, 6, generator=generator)
    text = torch.randn(1, 5, 8, generator=generator)
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
    with torch.no_grad():
        for sigma, following in zip(sigmas[:-1], sigmas[1:]):
            v = model(x, (sigma * 1000).expand(1), text)
            x = x + (following - sigma) * v
    return x


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyDiT().eval()


@pytest.mark.parametrize("method,options", [
    ("fbcache", {"threshold": 10.0}),
    ("teacache", {"coefficients": (1.0, 0.0), "threshold": 1.0}),
    ("adacache", {"preset": "fast", "codebook": ((10.0, 3),)}),
    ("pab", {"window": (0, 1000)}),
])
def test_step_and_block_level_methods_run_on_a_registered_family(model, method, options):
    assert "TinyDiT" in next(i for i in diffcache.list_methods() if i.name == method).families
    reference = sample(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        with diffcache.enable(model, method, num_inference_steps=STEPS, **options) as handle:
            cached = sample(model)
    call = handle.report().calls[-1]
    assert len(call.steps) == STEPS and call.steps[0].computed
    assert sum(s.blocks_reused for s in call.steps) > 0
    assert torch.isfinite(cached).all() and not torch.equal(cached, reference)
    assert torch.equal(sample(model), reference)  # disabled: bit-identical


@pytest.mark.parametrize("method,missing", [("hsa", "a token-sparse forward"),
                                            ("fastercache", "a token grid and batched-CFG argument layout"),
                                            ("deepcache", "U-Net skip branches")])
def test_methods_needing_more_say_which_capability_is_missing(model, method, missing):
    with pytest.raises(UnsupportedModelError, match=f"{method} does not support TinyDiT models.*it needs {missing}"):
        diffcache.enable(model, method, num_inference_steps=STEPS)
    assert not hasattr(model, "_diffcache_handle")


def test_moreg_needs_the_token_grid(model):
    with pytest.raises(UnsupportedModelError, match="adacache:fast-moreg needs a token grid, which the TinyDiT "
                                                    "adapter does not provide; choose a preset"):
        diffcache.enable(model, "adacache", preset="fast-moreg", num_inference_steps=STEPS)
