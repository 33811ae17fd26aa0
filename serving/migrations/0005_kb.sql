-- Knowledge base: documents (sources), their chunks and embeddings.
-- Written by `ratchet kb ingest` (serving/kb/ingest.py), read by the retriever.

CREATE TABLE kb_sources (
    id              bigserial PRIMARY KEY,
    location        text NOT NULL UNIQUE,       -- absolute path of the file: its identity
    path            text NOT NULL,              -- path shown in citations (relative to the ingested directory)
    title           text NOT NULL,
    kind            text NOT NULL,              -- markdown | text | html | pdf
    sha256          text NOT NULL,              -- of the file's bytes: unchanged files are skipped
    bytes           bigint NOT NULL,
    embedding_model text NOT NULL,              -- a different model re-embeds the file
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kb_chunks (
    id         bigserial PRIMARY KEY,
    source_id  bigint NOT NULL REFERENCES kb_sources (id) ON DELETE CASCADE,
    ordinal    int NOT NULL,                    -- position in the source, from 0
    text       text NOT NULL,
    dim        int NOT NULL,
    embedding  bytea NOT NULL,                  -- float32 little-endian, L2-normalised
    UNIQUE (source_id, ordinal)
);

-- One row: bumped in the transaction of every change, so retrievers notice
-- with one cheap read that their in-process index is stale.
CREATE TABLE kb_state (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    generation bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO kb_state DEFAULT VALUES;

-- pgvector when the server has it (Debian 12's PostgreSQL 15 does not): a
-- vector column the retriever then searches in SQL instead of in process.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        BEGIN
            EXECUTE 'CREATE EXTENSION IF NOT EXISTS vector';
            EXECUTE 'ALTER TABLE kb_chunks ADD COLUMN embedding_vec vector(384)';
            EXECUTE 'CREATE INDEX kb_chunks_embedding_vec ON kb_chunks'
                    ' USING hnsw (embedding_vec vector_cosine_ops)';
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pgvector available but not installable by this role; using the in-process index';
        END;
    END IF;
END
$$;
