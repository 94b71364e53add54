-- Data partners (HTTP APIs): their configuration, versioned, with secrets encrypted by the application
-- (storage/secrets.py, Fernet; the key never reaches the database), the cursor of each retrieval path,
-- their devices, and backfill requests. Independent of migration 0005.

CREATE TABLE partners.partners (
    id         text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$'),
    version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    config     jsonb NOT NULL,          -- the validated document, every secret replaced by '***'
    secrets    bytea,                   -- Fernet token of the secrets (JSON: place -> value)
    enabled    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every version ever stored (also of deleted partners): what ran when.
CREATE TABLE partners.partner_versions (
    partner_id text NOT NULL,
    version    integer NOT NULL,
    config     jsonb,                   -- NULL: the partner was deleted at this version
    secrets    bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, version)
);

-- Where each retrieval path stands: the watermark (end of the last complete run) and, during a run,
-- its window and the page to ask for next. Written only after Kafka confirmed the page before it.
CREATE TABLE partners.cursors (
    partner_id text NOT NULL REFERENCES partners.partners (id) ON DELETE CASCADE,
    path       text NOT NULL,
    cursor     jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, path)
);

-- A partner's external device id -> the meterray device (registered in devices.devices).
CREATE TABLE partners.devices (
    partner_id  text NOT NULL REFERENCES partners.partners (id) ON DELETE CASCADE,
    external_id text NOT NULL,
    device_id   text NOT NULL UNIQUE,
    PRIMARY KEY (partner_id, external_id)
);

CREATE TABLE partners.backfills (
    id         bigserial PRIMARY KEY,
    partner_id text NOT NULL REFERENCES partners.partners (id) ON DELETE CASCADE,
    path       text NOT NULL,
    since      timestamptz NOT NULL,
    until      timestamptz NOT NULL,
    state      jsonb,                   -- the next page while running
    status     text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    detail     text,
    pages      integer NOT NULL DEFAULT 0,
    records    integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (since < until)
);
CREATE INDEX ON partners.backfills (partner_id) WHERE status IN ('pending', 'running');

-- A change of a partner (or a new backfill) wakes the supervisor, as connection changes do.
CREATE FUNCTION partners.notify_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meterray_partners_changed', coalesce(NEW.partner_id, OLD.partner_id));
    RETURN NULL;
END $$;
CREATE FUNCTION partners.notify_partner_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meterray_partners_changed', coalesce(NEW.id, OLD.id));
    RETURN NULL;
END $$;
CREATE TRIGGER partners_changed AFTER INSERT OR UPDATE OR DELETE ON partners.partners
    FOR EACH ROW EXECUTE FUNCTION partners.notify_partner_changed();
CREATE TRIGGER backfills_added AFTER INSERT ON partners.backfills
    FOR EACH ROW EXECUTE FUNCTION partners.notify_changed();

-- The known-device cache of the device processor asks for recently registered devices on a miss.
CREATE INDEX IF NOT EXISTS devices_created_at ON devices.devices (created_at);

-- Partner devices are not decoded by a Modbus profile: they name the profile 'partner', which
-- exists for the foreign key only; the check that a profile is one the code knows stays for every
-- other protocol.
INSERT INTO devices.profiles (name, available) VALUES ('partner', false) ON CONFLICT DO NOTHING;
DROP TRIGGER devices_profile_known ON devices.devices;
CREATE TRIGGER devices_profile_known BEFORE INSERT OR UPDATE OF profile ON devices.devices
    FOR EACH ROW WHEN (NEW.protocol <> 'partner_http') EXECUTE FUNCTION devices.check_device_profile();
