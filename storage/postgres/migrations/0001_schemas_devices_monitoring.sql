-- One schema per seed service (DESIGN.md): they may become separate databases later.
CREATE SCHEMA IF NOT EXISTS auth;
CREATE SCHEMA IF NOT EXISTS devices;
CREATE SCHEMA IF NOT EXISTS monitoring;
CREATE SCHEMA IF NOT EXISTS partners;
CREATE SCHEMA IF NOT EXISTS notify;

-- Device monitoring: what to poll and the state of every device.
CREATE TABLE devices.connections (
    id              text PRIMARY KEY,
    protocol        text NOT NULL CHECK (protocol IN ('modbus_tcp')),
    host            text NOT NULL,
    port            integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    poll_interval_s double precision NOT NULL DEFAULT 5 CHECK (poll_interval_s > 0),
    timeout_s       double precision NOT NULL DEFAULT 1 CHECK (timeout_s > 0),
    enabled         boolean NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (timeout_s < poll_interval_s)
);

CREATE TABLE devices.devices (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    protocol      text NOT NULL,
    profile       text NOT NULL,
    connection_id text REFERENCES devices.connections (id) ON DELETE CASCADE,
    unit_id       integer CHECK (unit_id BETWEEN 0 AND 255),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connection_id, unit_id)
);
CREATE INDEX ON devices.devices (connection_id);

-- Checkpoint of the device processor: reloaded when a processor (re)starts.
CREATE TABLE devices.device_state (
    device_id            text PRIMARY KEY,
    status               text NOT NULL DEFAULT 'unknown',
    last_seen            timestamptz,
    last_failure_kind    text,
    last_failure         text,
    last_failure_at      timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    counters             jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Data monitoring: the archive, partitioned by month, keyed by reading.
CREATE TABLE monitoring.readings (
    device_id text NOT NULL,
    quantity  text NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    unit      text NOT NULL,
    quality   integer NOT NULL DEFAULT 0,
    source    text NOT NULL DEFAULT '',
    PRIMARY KEY (device_id, quantity, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE monitoring.readings_current (
    device_id text NOT NULL,
    quantity  text NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    unit      text NOT NULL,
    quality   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, quantity)
);

-- Creates the month partition holding `at` if missing; safe to call concurrently.
CREATE FUNCTION monitoring.ensure_readings_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi   timestamptz := lo + interval '1 month';
    name text := format('readings_%s', to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM'));
BEGIN
    IF to_regclass('monitoring.' || name) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('monitoring.' || name));
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS monitoring.%I PARTITION OF monitoring.readings FOR VALUES FROM (%L) TO (%L)',
            name, lo, hi);
    END IF;
    RETURN name;
END $$;

SELECT monitoring.ensure_readings_partition(now());
SELECT monitoring.ensure_readings_partition(now() + interval '1 month');
