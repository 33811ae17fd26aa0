-- How a source was split (`<chunk_size>/<chunk_overlap>` characters): an ingest
-- with other chunk settings re-splits an unchanged file instead of keeping its
-- old chunks. Sources ingested before this column existed re-split once.

ALTER TABLE kb_sources ADD COLUMN chunking text NOT NULL DEFAULT '';
