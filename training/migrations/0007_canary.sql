-- Canary: at most one candidate version served beside production for A/B drafts.
-- A role on a version (like an MLflow alias), not a status: the version stays a candidate.
ALTER TABLE model_versions ADD COLUMN canary boolean NOT NULL DEFAULT false;
ALTER TABLE model_versions ADD CONSTRAINT model_versions_canary_is_candidate
    CHECK (NOT canary OR status = 'candidate');
-- At most one canary at a time.
CREATE UNIQUE INDEX model_versions_one_canary ON model_versions (canary) WHERE canary;

ALTER TABLE model_audit DROP CONSTRAINT model_audit_action_check;
ALTER TABLE model_audit ADD CONSTRAINT model_audit_action_check CHECK (action IN (
    'bootstrap', 'register', 'promote', 'rollback', 'reject', 'force_promote',
    'canary', 'canary_clear'
));
