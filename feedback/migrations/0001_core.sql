-- Users, conversations and the messages that can be rated.
CREATE TABLE users (
    id          text PRIMARY KEY,             -- stable user name (API key owner, Slack-mapped user)
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conversations (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per assistant reply (a MessageLogged event).
CREATE TABLE messages (
    id              text PRIMARY KEY,         -- the signed message_id given to the client
    event_id        uuid NOT NULL UNIQUE,
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    user_id         text NOT NULL REFERENCES users (id),
    model_version   text NOT NULL,
    prompt          jsonb NOT NULL,           -- the chat messages sent to the model
    prompt_hash     text NOT NULL,            -- groups replies to the same prompt
    reply           text NOT NULL,
    prompt_token_ids int[],
    reply_token_ids  int[],
    finish_reason   text,
    usage           jsonb NOT NULL DEFAULT '{}'::jsonb,
    latency_ms      double precision,
    ttft_ms         double precision,
    citations       jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at      timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_prompt_hash_idx ON messages (prompt_hash);
CREATE INDEX messages_conversation_idx ON messages (conversation_id);
CREATE INDEX messages_stored_at_idx ON messages (stored_at);
