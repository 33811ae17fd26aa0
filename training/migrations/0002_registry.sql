-- Model registry: versions, training runs, and an append-only audit log.
CREATE TABLE training_runs (
    id           uuid PRIMARY KEY,
    status       text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    algo         text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    watermark    timestamptz,                 -- feedback up to this time was used
    metrics      jsonb NOT NULL DEFAULT '{}'::jsonb,
    timings      jsonb NOT NULL DEFAULT '{}'::jsonb,
    logs_path    text,
    plot_path    text,
    config       jsonb NOT NULL DEFAULT '{}'::jsonb,
    candidate_version text,               -- the version this run registered, if any
    error        text
);
CREATE INDEX training_runs_started ON training_runs (started_at);

CREATE TABLE model_versions (
    id             text PRIMARY KEY,          -- e.g. v0001
    parent_id      text REFERENCES model_versions (id),
    path           text NOT NULL,
    weights_sha256 text NOT NULL,
    training_run_id uuid REFERENCES training_runs (id),
    metrics        jsonb NOT NULL DEFAULT '{}'::jsonb,
    gate_report    jsonb,
    gates_passed   boolean,
    status         text NOT NULL CHECK (status IN ('candidate', 'rejected', 'production', 'retired')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- At most one production version at a time.
CREATE UNIQUE INDEX model_versions_one_production ON model_versions (status) WHERE status = 'production';

CREATE TABLE model_audit (
    id          bigserial PRIMARY KEY,
    action      text NOT NULL CHECK (action IN ('bootstrap', 'register', 'promote', 'rollback', 'reject', 'force_promote')),
    actor       text NOT NULL,
    from_version text,
    to_version  text,
    reason      text,
    at          timestamptz NOT NULL DEFAULT now()
);
-- Append-only: forbid UPDATE and DELETE on the audit log.
CREATE FUNCTION model_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'model_audit is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER model_audit_no_change BEFORE UPDATE OR DELETE ON model_audit
    FOR EACH ROW EXECUTE FUNCTION model_audit_append_only();
