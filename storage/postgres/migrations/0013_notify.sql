-- The notifications service's own schema (DESIGN.md: each seed service keeps its schema). Users and
-- organisations live in `auth`, devices in `devices`: referenced by id only, no foreign keys across schemas.
-- Kinds (meterray.notify.Kind): device_offline, device_degraded, device_stale, device_online, data_quality.
CREATE SCHEMA IF NOT EXISTS notify;

-- Which event kinds notify whom, on which channels: the platform's defaults (one row per kind) ...
CREATE TABLE notify.default_rules (
    kind     text PRIMARY KEY CHECK (kind IN ('device_offline', 'device_degraded', 'device_stale', 'device_online',
                                             'data_quality')),
    enabled  boolean NOT NULL DEFAULT true,
    roles    text[] NOT NULL CHECK (roles <@ ARRAY['admin', 'operator', 'customer']),
    channels text[] NOT NULL CHECK (channels <@ ARRAY['in_app', 'email'])
);
-- E-mail for what needs someone to act (a meter lost, a meter back, counters that went backwards);
-- in-app only for the milder states. Every user of the organisation by default.
INSERT INTO notify.default_rules (kind, roles, channels) VALUES
    ('device_offline',  ARRAY['admin', 'operator', 'customer'], ARRAY['in_app', 'email']),
    ('device_online',   ARRAY['admin', 'operator', 'customer'], ARRAY['in_app', 'email']),
    ('device_degraded', ARRAY['admin', 'operator', 'customer'], ARRAY['in_app']),
    ('device_stale',    ARRAY['admin', 'operator', 'customer'], ARRAY['in_app']),
    ('data_quality',    ARRAY['admin', 'operator', 'customer'], ARRAY['in_app', 'email']);

-- ... and an organisation's own rule for a kind, which replaces the default for it.
CREATE TABLE notify.rules (
    organisation_id uuid NOT NULL,
    kind            text NOT NULL REFERENCES notify.default_rules (kind),
    enabled         boolean NOT NULL DEFAULT true,
    roles           text[] NOT NULL CHECK (roles <@ ARRAY['admin', 'operator', 'customer']),
    channels        text[] NOT NULL CHECK (channels <@ ARRAY['in_app', 'email']),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organisation_id, kind)
);

-- A user's channels (no row: both on, nothing muted).
CREATE TABLE notify.preferences (
    user_id     uuid PRIMARY KEY,
    in_app      boolean NOT NULL DEFAULT true,
    email       boolean NOT NULL DEFAULT true,
    muted_kinds text[] NOT NULL DEFAULT '{}'
                CHECK (muted_kinds <@ ARRAY['device_offline', 'device_degraded', 'device_stale', 'device_online',
                                            'data_quality']),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every device event the notifier acted on, by its identity: a redelivered event finds its key and
-- creates nothing new.
CREATE TABLE notify.events (
    event_key       text PRIMARY KEY CHECK (length(event_key) = 32),
    device_id       text NOT NULL,
    organisation_id uuid NOT NULL,
    kind            text NOT NULL,
    ts              timestamptz NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('notified', 'suppressed', 'too_old')),
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_device ON notify.events (device_id, ts);

-- Throttling per device and kind: at most one notification per window (event time); what falls
-- inside the window is counted, not sent.
CREATE TABLE notify.throttle (
    device_id        text NOT NULL,
    kind             text NOT NULL,
    window_until     timestamptz NOT NULL,
    last_event_key   text NOT NULL,
    suppressed       integer NOT NULL DEFAULT 0 CHECK (suppressed >= 0),  -- since the last notification
    suppressed_total bigint NOT NULL DEFAULT 0 CHECK (suppressed_total >= 0),
    PRIMARY KEY (device_id, kind)
);

-- In-app notifications (the personal cabinet), one per user and event.
CREATE TABLE notify.notifications (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         uuid NOT NULL,
    organisation_id uuid NOT NULL,
    event_key       text NOT NULL,
    kind            text NOT NULL,
    device_id       text NOT NULL,
    title           text NOT NULL,
    body            text NOT NULL,
    event_ts        timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    read_at         timestamptz,
    suppressed      integer NOT NULL DEFAULT 0 CHECK (suppressed >= 0),  -- like events throttled after this one
    UNIQUE (user_id, event_key)
);
-- The list: a user's unread first, newest first (keyset on (read, id)).
CREATE INDEX notifications_list ON notify.notifications (user_id, (read_at IS NOT NULL), id DESC);
CREATE INDEX notifications_event ON notify.notifications (event_key);

-- E-mails to send, delivered by the notifier's outbox sender (Unisender Go email/send.json).
-- idempotence_key goes with every attempt, so a retry after a lost answer never sends twice.
CREATE TABLE notify.email_outbox (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotence_key     uuid NOT NULL UNIQUE,
    event_key           text NOT NULL,
    user_id             uuid NOT NULL,
    email               text NOT NULL CHECK (length(email) <= 254),
    subject             text NOT NULL,
    body_plain          text NOT NULL,
    body_html           text NOT NULL,
    -- pending: to send (again at next_attempt_at); sent: Unisender took it (job_id); logged: no API key,
    -- written to the log only (development); rejected: Unisender refused the address; failed: given up.
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sent', 'logged', 'rejected', 'failed')),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    last_error          text,
    job_id              text,
    sent_at             timestamptz,
    -- From Unisender's webhook (transactional_email_status): sent, delivered, opened, clicked,
    -- soft_bounced, hard_bounced, spam, unsubscribed, subscribed; the latest by event time.
    delivery_status     text,
    delivery_detail     text,
    delivery_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX email_outbox_due ON notify.email_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX email_outbox_job ON notify.email_outbox (job_id) WHERE job_id IS NOT NULL;

-- Webhook events already applied: Unisender resends a batch it got no 2xx for, and an event has no id
-- of its own (external_apis.md §3.6), so (job_id, email, status, event_time) is its identity.
CREATE TABLE notify.email_events (
    job_id      text NOT NULL,
    email       text NOT NULL,
    status      text NOT NULL,
    event_time  timestamptz NOT NULL,
    detail      text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, email, status, event_time)
);
