"""Small stand-ins for learned-metric weights, built in the tests: a tiny random CLIP folder and a TorchScript
detector with the call signature of StyleGAN-V's I3D (tests/quality/test_learned.py, the metrics command and the
benchmark use them)."""

import json

import torch


def make_clip_folder(folder):
    """A tiny random CLIPModel saved as a real transformers folder (safetensors, tokenizer, image processor)."""
    import transformers
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    words = ["a", "red", "ball", "on", "the", "grass", "cat", "dog", "blue"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in sorted(set("".join(words))):
        vocab.setdefault(character, len(vocab))
        vocab.setdefault(character + "</w>", len(vocab))
    merges = ["r e", "re d</w>", "b a", "ba l", "bal l</w>", "o n</w>", "t h", "th e</w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    image_processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    image_processor = image_processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))

    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(str(folder), safe_serialization=True)
    return folder


class _TinyDetector(torch.nn.Module):
    """StyleGAN-V's I3D call signature; refuses anything but 8-bit [N, 3, T, H, W] videos with the FVD kwargs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(9, 6)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if not (rescale and resize and return_features):
            raise RuntimeError("called without rescale=True, resize=True, return_features=True")
        if x.dtype != torch.uint8 or x.dim() != 5 or x.shape[1] != 3:
            raise RuntimeError("expected 8-bit videos [N, 3, T, H, W]")
        if x.shape[2] < 3:
            raise RuntimeError("too few frames for the temporal pooling")
        v = x.float() / 127.5 - 1.0
        motion = (v[:, :, 1:] - v[:, :, :-1]).abs().mean(dim=[2, 3, 4])
        stats = torch.cat([v.mean(dim=[2, 3, 4]), v.std(dim=[2, 3, 4]), motion], dim=1)
        return self.head(stats)


def make_detector_file(file):
    """The stand-in detector scripted and saved as TorchScript at ``file``."""
    torch.jit.save(torch.jit.script(_TinyDetector().eval()), str(file))
    return file
