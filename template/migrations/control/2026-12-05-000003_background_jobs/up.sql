-- Background jobs. Every job belongs to one tenant (tenant_id NOT NULL): no job runs
-- without a tenant. Destroying a tenant removes its registry row, and with it its jobs
-- (ON DELETE CASCADE, in destroy's transaction).
--
-- States: queued -> running -> done; running -> queued again (a failed attempt, retried
-- at run_at, or a worker that stopped: its lease expired) or dead (no attempt left);
-- queued|dead -> cancelled (by an operator); dead|cancelled -> queued (retried by one).
CREATE TABLE tenancy.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    queue            text NOT NULL CHECK (queue ~ '^[a-z][a-z0-9_]{0,62}$'),
    kind             text NOT NULL CHECK (char_length(kind) BETWEEN 1 AND 100),
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'done', 'dead', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    -- Not before this (scheduled jobs, and retries after their backoff); once claimed,
    -- when the attempt started.
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- The running attempt's token: only the worker holding it may end the attempt.
    lease            uuid,
    -- A running job whose lease is not renewed by then is retried (its worker stopped).
    locked_until     timestamptz,
    result           jsonb,
    last_error       text,
    -- Enqueueing the same key again (for the same tenant) returns the first job.
    idempotency_key  text CHECK (char_length(idempotency_key) BETWEEN 1 AND 200),
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CHECK ((state = 'running') = (lease IS NOT NULL AND locked_until IS NOT NULL))
);

CREATE UNIQUE INDEX jobs_idempotency_key_idx ON tenancy.jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- A tenant's next job.
CREATE INDEX jobs_due_idx ON tenancy.jobs (tenant_id, run_at, id) WHERE state = 'queued';
-- Leases to expire.
CREATE INDEX jobs_running_idx ON tenancy.jobs (locked_until) WHERE state = 'running';
-- A tenant's jobs, newest first (lists).
CREATE INDEX jobs_tenant_idx ON tenancy.jobs (tenant_id, id);
-- What /metrics counts, and what is pruned.
CREATE INDEX jobs_open_idx ON tenancy.jobs (queue, state) WHERE state IN ('queued', 'running', 'dead');
CREATE INDEX jobs_finished_idx ON tenancy.jobs (finished_at) WHERE state IN ('done', 'cancelled');

-- Whose turn it is: one row per tenant that has had jobs. Workers serve the ready tenant
-- served least recently, one job at a time, so one tenant's 100,000 jobs delay another
-- tenant's next job by at most one job per worker. `ready` is false once a tenant has
-- nothing due; enqueueing sets it again, and so does the workers' sweep when a scheduled
-- job or a retry comes due.
CREATE TABLE tenancy.job_turns (
    tenant_id  uuid PRIMARY KEY REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    ready      boolean NOT NULL DEFAULT true,
    served_at  timestamptz NOT NULL DEFAULT '-infinity'
);

CREATE INDEX job_turns_ready_idx ON tenancy.job_turns (served_at, tenant_id) WHERE ready;

-- Claims the next job: of the ready tenants that are active and not in maintenance (the
-- jobs of the others are held), the one served least recently, its job due first.
-- Workers running this at once never take the same tenant's turn or the same job (SKIP
-- LOCKED). The job runs under a lease of `lease_for`, which its worker renews.
CREATE FUNCTION tenancy.claim_job(lease_for interval) RETURNS SETOF tenancy.jobs
LANGUAGE plpgsql AS $$
DECLARE
    turn uuid;
    -- Tenants whose turn came with nothing to take (their due jobs all locked by other
    -- workers, or none due any more).
    passed uuid[] := '{}';
    claimed tenancy.jobs;
BEGIN
    LOOP
        -- One turn at a time (LIMIT 1): only the turn taken is locked.
        SELECT s.tenant_id INTO turn FROM tenancy.job_turns s
          JOIN tenancy.tenants t ON t.id = s.tenant_id
         WHERE s.ready AND t.status = 'active' AND t.maintenance = 'off'
           AND s.tenant_id <> ALL (passed)
         ORDER BY s.served_at, s.tenant_id
         LIMIT 1
           FOR UPDATE OF s SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        UPDATE tenancy.jobs j
           SET state = 'running', attempts = j.attempts + 1, lease = gen_random_uuid(),
               locked_until = now() + lease_for, run_at = now()
         WHERE j.id = (SELECT q.id FROM tenancy.jobs q
                        WHERE q.tenant_id = turn AND q.state = 'queued' AND q.run_at <= now()
                        ORDER BY q.run_at, q.id
                        LIMIT 1
                          FOR UPDATE SKIP LOCKED)
        RETURNING j.* INTO claimed;
        IF FOUND THEN
            UPDATE tenancy.job_turns SET served_at = clock_timestamp() WHERE tenant_id = turn;
            RETURN NEXT claimed;
            RETURN;
        END IF;
        -- Nothing due (not merely locked by another worker): not ready until enqueued
        -- again or swept.
        IF NOT EXISTS (SELECT 1 FROM tenancy.jobs q
                        WHERE q.tenant_id = turn AND q.state = 'queued' AND q.run_at <= now()) THEN
            UPDATE tenancy.job_turns SET ready = false WHERE tenant_id = turn;
        END IF;
        passed := passed || turn;
    END LOOP;
END
$$;

-- Operators retry and cancel jobs: the audit trail records it.
ALTER TABLE tenancy.audit DROP CONSTRAINT audit_operation_check;
ALTER TABLE tenancy.audit ADD CONSTRAINT audit_operation_check
    CHECK (operation IN ('create', 'suspend', 'activate', 'delete', 'destroy', 'limits',
                         'maintenance', 'migrate', 'release', 'job_retry', 'job_cancel'));
