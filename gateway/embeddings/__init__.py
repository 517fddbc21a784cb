"""OpenAI Embeddings API on the embeddings worker."""
