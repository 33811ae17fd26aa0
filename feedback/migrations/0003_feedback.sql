-- Feedback: ratings, comparisons, corrections, preference pairs, dead letters.
-- Feedback rows reference messages by id WITHOUT a foreign key: a rating may
-- arrive (on its own topic) before its MessageLogged; pairs join at export time.

-- Latest rating per (user, reply) wins; event_id is the idempotency key.
CREATE TABLE ratings (
    user_id     text NOT NULL REFERENCES users (id),
    message_id  text NOT NULL,
    event_id    uuid NOT NULL UNIQUE,
    thumbs      text CHECK (thumbs IN ('up', 'down')),
    stars       smallint CHECK (stars BETWEEN 1 AND 5),
    score       double precision NOT NULL CHECK (score BETWEEN 0 AND 1),
    comment     text,
    tags        text[] NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL,
    revisions   integer NOT NULL DEFAULT 1,   -- how many ratings this row has absorbed
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, message_id),
    CHECK ((thumbs IS NULL) <> (stars IS NULL))
);
CREATE INDEX ratings_message_idx ON ratings (message_id);
CREATE INDEX ratings_occurred_idx ON ratings (occurred_at);

-- A/B picks between two replies to the same prompt.
CREATE TABLE comparisons (
    event_id     uuid PRIMARY KEY,
    user_id      text NOT NULL REFERENCES users (id),
    message_id_a text NOT NULL,
    message_id_b text NOT NULL,
    winner       text NOT NULL CHECK (winner IN ('a', 'b', 'tie')),
    occurred_at  timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comparisons_occurred_idx ON comparisons (occurred_at);

-- The answer the user wanted; latest per (user, reply) wins.
CREATE TABLE corrections (
    user_id         text NOT NULL REFERENCES users (id),
    message_id      text NOT NULL,
    event_id        uuid NOT NULL UNIQUE,
    corrected_reply text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    revisions       integer NOT NULL DEFAULT 1,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, message_id)
);
CREATE INDEX corrections_occurred_idx ON corrections (occurred_at);

-- Pairs written by `ratchet feedback export` (PII-redacted; provenance kept).
CREATE TABLE preference_pairs (
    pair_key            text PRIMARY KEY,     -- sha256 of (prompt, chosen, rejected)
    source              text NOT NULL CHECK (source IN ('comparison', 'correction', 'rating')),
    prompt              jsonb NOT NULL,
    chosen              text NOT NULL,
    rejected            text NOT NULL,
    conversation_id     uuid,
    chosen_message_id   text,
    rejected_message_id text NOT NULL,
    model_version       text,
    feedback_at         timestamptz NOT NULL,
    exported_at         timestamptz NOT NULL DEFAULT now()
);

-- Events that failed validation, with the reason (also on ratchet.dead-letters.v1).
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    key          bytea,
    value        bytea,
    value_sha256 text NOT NULL,
    reason       text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, "offset", value_sha256)
);
