"""Sentence embeddings with transformers alone: the encoder's mean-pooled, L2-normalised token states.

This is what the all-MiniLM-L6-v2 model card does (and sentence-transformers' Pooling + Normalize
modules, which hone does not need to install): mean over the attention mask, then unit length, so a
dot product is the cosine similarity. Any local sentence-transformers folder works the same way; a
folder whose 1_Pooling config asks for the CLS token gets that instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hone.models.catalogue import DEFAULT_ENCODER, resolve_model

MAX_CONTEXT = 512   # BERT-style encoders' position limit, for folders that do not say theirs


class Encoder:
    """A loaded sentence encoder: `count` tokens, `embed` texts into unit vectors."""

    def __init__(self, spec: str = DEFAULT_ENCODER, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        from hone.models.load import quiet_transformers

        quiet_transformers()
        self.spec = spec
        self.path = Path(resolve_model(spec).path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(device).eval()
        self.device = device
        self.max_tokens = _context(self.path, self.tokenizer)
        self.cls = _pooling(self.path).get("pooling_mode_cls_token", False)
        self.dim = int(self.model.config.hidden_size)

    def count(self, texts: list[str]) -> list[int]:
        """Tokens of each text as the encoder sees it, without its [CLS]/[SEP]."""
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))   # similar lengths pad less
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                picked = order[start:start + batch_size]
                encoded = self.tokenizer([texts[i] for i in picked], padding=True, truncation=True,
                                         max_length=self.max_tokens + 2, return_tensors="pt").to(self.device)
                states = self.model(**encoded).last_hidden_state
                if self.cls:
                    pooled = states[:, 0]
                else:
                    mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
                    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[picked] = pooled.float().cpu().numpy()
        return out


def _context(folder: Path, tokenizer) -> int:
    """Tokens per text the encoder was trained on (sentence_bert_config's max_seq_length), less [CLS]/[SEP]."""
    try:
        limit = int(json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))["max_seq_length"])
    except (OSError, ValueError, KeyError):
        limit = min(int(getattr(tokenizer, "model_max_length", MAX_CONTEXT)), MAX_CONTEXT)
    return limit - 2


def _pooling(folder: Path) -> dict:
    try:
        return json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
