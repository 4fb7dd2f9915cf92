"""Sentence-transformers embedder (e.g. ``packaged:minilm``, all-MiniLM-L6-v2): semantic embeddings."""

from __future__ import annotations

from deita.models.loading import resolve_device


class SentenceEmbedder:
    """Embeds texts with a sentence-transformers folder; ``max_length`` caps the model's sequence length."""

    def __init__(self, path: str, *, max_length: int = 2048, batch_size: int = 32, device: str = "auto",
                 trust_remote_code: bool = False, show_progress: bool = True, **_unused):
        from sentence_transformers import SentenceTransformer

        self.path, self.batch_size, self.show_progress = str(path), int(batch_size), show_progress
        self.model = SentenceTransformer(self.path, device=resolve_device(device), trust_remote_code=trust_remote_code)
        if self.model.max_seq_length is None or max_length < self.model.max_seq_length:
            self.model.max_seq_length = int(max_length)

    def embed_texts(self, texts: list[str], normalize: bool = True):
        """Float32 embeddings ``[N, D]``; L2-normalised rows unless ``normalize=False``."""
        import numpy as np

        from deita.selection.filters import l2_normalize

        raw = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=False, show_progress_bar=self.show_progress and len(texts) > self.batch_size)
        raw = np.asarray(raw, dtype=np.float32)
        return l2_normalize(raw) if normalize else raw
