"""A smaller student made from a model: the same model with fewer decoder layers.

Initialising a student from a subset of the teacher's layers (DistilBERT took every other layer of BERT,
Sanh et al. 2019) starts it far closer to the teacher than random weights; distillation then repairs
what the missing layers did. The first and the last layer are always kept (the last writes what the
output layer reads) and the rest are spread evenly between them.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from hone import atomic
from hone.errors import UserError
from hone.models.load import load_causal_lm, load_tokenizer


def kept_layers(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices out of `n_layers`, first and last included, evenly spread: 30 -> 15 keeps
    0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29."""
    if not 2 <= keep <= n_layers:
        raise UserError(f"cannot keep {keep} of {n_layers} layers (keep at least 2, at most all)")
    return [round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)]


def drop_layers(model_spec: str, out: Path, keep: int | None = None) -> Path:
    """Save `model_spec` (catalogue name, HF folder, .gguf) with only `keep` of its decoder layers (default:
    half) as an HF folder at `out`, with its tokenizer; written atomically. Returns `out`."""
    model = load_causal_lm(model_spec)
    tokenizer = load_tokenizer(model_spec)
    decoder = model.get_decoder()
    layers = decoder.layers
    indices = kept_layers(len(layers), keep or max(2, len(layers) // 2))
    decoder.layers = nn.ModuleList(layers[i] for i in indices)
    for position, layer in enumerate(decoder.layers):
        for module in layer.modules():  # attention finds its slot in the key/value cache by index
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    config = model.config
    config.num_hidden_layers = len(indices)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in indices]
    with atomic.folder(Path(out)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out)

