-- Runs once in every tenant schema (search_path is that schema only): leave names unqualified.
CREATE TABLE notes (
    -- The service writes time-ordered UUIDv7 ids (the default covers rows written by
    -- hand): ids say nothing about how much any tenant writes.
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title       text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    body        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
