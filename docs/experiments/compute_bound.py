"""Overhead efficiency in the compute-bound regime: every method on a random-weight Wan-architecture transformer of
real width, timed by ``diffcache bench``.

The tiny models the tests and the demo use are dominated by Python and dispatch cost, so a method's bookkeeping
looks large there. Here the transformer has Wan 2.1-1.3B's block (1,536 wide, 12 heads of 128, FFN 8,960; Wan's
``WanTransformer3DModel`` from diffusers) but only ``--blocks`` of its 30 blocks and random weights, and each
forward sees 1,536 video tokens (256×512, 9 frames → 3 × 16 × 32 latent patches). Text encoder and VAE are tiny
(their cost is a rounding error next to the transformer's). The bench times the methods interleaved in one process
and reports ``overhead efficiency = speedup ÷ FLOP speedup``: 1.0 means a method turns every FLOP it skips into
wall-clock time; the shortfall is its overhead (decision metrics, cache copies, hooks).

Run from the repository root (about 15 minutes on 2 CPU cores; resumes if stopped)::

    PYTHONPATH=src .venv/bin/python docs/experiments/compute_bound.py --out out/compute-bound

It writes the pipeline to ``OUT/pipeline`` (random weights, seed 0) once, then runs ``diffcache bench`` on it into
``OUT/bench`` (``summary.md`` has the table). Extra arguments after ``--`` go to the bench, e.g. ``-- --repeats 3``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

#: the methods timed. FasterCache, HSA and PAB at their defaults (their schedules and budgets reuse whatever the
#: model does). The adaptive ones decide from how much this random-weight model's features change — a lot, so at
#: their defaults they reuse nothing and only their overhead would show: AdaCache gets a fixed rate of 2 (one
#: codebook entry), First-Block-Cache a threshold this model passes, TeaCache the identity polynomial and a
#: threshold (its published coefficients are for the trained Wan). The measure is overhead, not quality.
METHODS = ("none,adacache:fast[codebook=((1e9, 2),)],fastercache,fbcache[threshold=0.5],hsa,pab,"
           "teacache[coefficients=(1.0, 0.0);threshold=0.6]")


def build_pipeline(folder: Path, blocks: int, seed: int = 0) -> None:
    """Save a ``WanPipeline`` whose transformer has Wan 2.1-1.3B's width and ``blocks`` blocks, random weights."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    words = ["<pad>", "</s>", "<unk>", "a", "cat", "surfing", "on", "the", "beach", "dog", "running"]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=64, d_kv=16, d_ff=64, num_layers=1,
                                               num_heads=4, relative_attention_num_buckets=8))
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    # Wan 2.1-1.3B's transformer config (Wan-AI/Wan2.1-T2V-1.3B-Diffusers), but `blocks` layers and a 64-wide text
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=256, ffn_dim=8960, num_layers=blocks, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(partial)
    partial.rename(folder)  # a folder that exists is a complete one


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="example: PYTHONPATH=src .venv/bin/python docs/experiments/compute_bound.py"
                                            " --out out/compute-bound -- --repeats 3")
    parser.add_argument("--out", type=Path, default=Path("out/compute-bound"), help="output folder")
    parser.add_argument("--blocks", type=int, default=2, help="transformer blocks (default: 2 of Wan 1.3B's 30)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default: 10)")
    parser.add_argument("--methods", default=METHODS, help=f"bench --methods (default: {METHODS})")
    args = parser.parse_args(argv)
    folder = args.out / "pipeline"
    if not folder.exists():
        build_pipeline(folder, args.blocks)
    from diffcache.cli import main as cli

    cli(["bench", "--model", str(folder), "--prompt", "a cat surfing on the beach", "--methods", args.methods,
         "--steps", str(args.steps), "--height", "256", "--width", "512", "--frames", "9", "--repeats", "2",
         "--out", str(args.out / "bench"), *extra])


if __name__ == "__main__":
    main()
