"""The knowledge base: ingestion of documents into Postgres, embeddings, and
retrieval (an in-process index, or pgvector when the server has it)."""
