-- API keys for the chat API: only the sha256 of each key is stored.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    key_hash    text NOT NULL UNIQUE,          -- hex sha256 of the full key
    prefix      text NOT NULL,                 -- first characters, to recognise a key in lists
    user_id     text NOT NULL REFERENCES users (id),
    role        text NOT NULL CHECK (role IN ('user', 'operator', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);
