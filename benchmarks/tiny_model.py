"""A tiny, randomly initialised Gemma 3 with a word-level tokenizer, saved like a real checkpoint.

It goes through exactly the loading code that real checkpoints use, in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = (
    "the a an of to in on and is was for with as by at from it this that be are cat dog sat mat "
    "quick brown fox jumps over lazy search vector index query document embedding model server "
    "hello world red green blue apple banana cherry data base fast slow big small one two three"
).split()


def save_tiny_gemma(path: Path, *, layers: int = 2, hidden: int = 64, dense_out: int | None = None) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import Gemma3TextConfig, Gemma3TextModel, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        sliding_window=16,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    model = Gemma3TextModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if dense_out:  # sentence-transformers layout, as EmbeddingGemma ships it
        from safetensors.torch import save_file

        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
        sizes = [hidden, dense_out * 2, dense_out]
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]), start=2):
            folder = path / f"{i}_Dense"
            folder.mkdir()
            (folder / "config.json").write_text(
                json.dumps({"in_features": n_in, "out_features": n_out, "bias": False,
                            "activation_function": "torch.nn.modules.linear.Identity"})
            )
            save_file({"linear.weight": torch.randn(n_out, n_in) / n_in**0.5}, folder / "model.safetensors")
            modules.append({"idx": i, "name": str(i), "path": folder.name, "type": "sentence_transformers.models.Dense"})
        (path / "modules.json").write_text(json.dumps(modules))
    return path
