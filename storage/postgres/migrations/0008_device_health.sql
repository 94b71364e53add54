-- Device health and data quality (meterray.health, meterray.validation): the device processor's
-- checkpoint keeps the health fields the API shows as columns, and the rest of its memory
-- (validation history, health internals) in `memory`, so a restarted or rebalanced processor
-- neither forgets a device nor raises false alarms.
ALTER TABLE devices.device_state
    ADD COLUMN reasons        text[] NOT NULL DEFAULT '{}',
    ADD COLUMN link           text NOT NULL DEFAULT 'unknown',
    ADD COLUMN data           text NOT NULL DEFAULT 'unknown',
    ADD COLUMN last_success   timestamptz,
    ADD COLUMN error_ratio    double precision NOT NULL DEFAULT 0,
    ADD COLUMN clock_offset_s double precision,
    ADD COLUMN memory         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The inactivity sweep changes a state without new input: at the same input position, a later
    -- sweep's checkpoint replaces an earlier one (and a late save of an older owner does not).
    ADD COLUMN swept_at       timestamptz,
    ADD CONSTRAINT device_state_status CHECK (status IN ('unknown', 'online', 'degraded', 'stale', 'offline')),
    ADD CONSTRAINT device_state_link CHECK (link IN ('unknown', 'up', 'down')),
    ADD CONSTRAINT device_state_data CHECK (data IN ('unknown', 'fresh', 'frozen', 'missing'));

-- Every status transition, as published on `device-events`: the history the health API shows.
-- Keyed so that a transition published twice (a processor that died between publishing and
-- checkpointing repeats it) is stored once.
CREATE TABLE devices.health_transitions (
    device_id text NOT NULL,
    ts        timestamptz NOT NULL,
    status    text NOT NULL,
    previous  text NOT NULL,
    reasons   text[] NOT NULL DEFAULT '{}',
    reason    text NOT NULL DEFAULT '',
    PRIMARY KEY (device_id, ts, status)
);

-- The device list filters by status.
CREATE INDEX device_state_status_idx ON devices.device_state (status, device_id);
