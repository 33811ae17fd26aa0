-- Slack adapter (serving/slack): who is who, and which events were answered.

-- Slack user -> Ratchet user id ("slack:<team>:<user>"), recorded on first sight.
CREATE TABLE slack_users (
    team_id        text NOT NULL,
    slack_user_id  text NOT NULL,
    user_id        text NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, slack_user_id)
);

-- Event ids already taken: Slack retries an event (X-Slack-Retry-Num) when it
-- saw no 200 in time; a retry of an event in this table is not answered again.
-- Rows older than a day are pruned by the adapter.
CREATE TABLE slack_events (
    event_id     text PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX slack_events_received_at_idx ON slack_events (received_at);
