-- Bad configuration is refused when it is stored, here as well as by the pydantic model at the edge
-- (meterray/config.py holds the same rules and cites the Modbus documents for the unit ids).

-- Meter profiles the code knows. `meterray migrate` keeps this table in sync with
-- protocols.modbus.profiles.PROFILES (storage.postgres.devices.sync_profiles): a table, not a CHECK
-- listing names, so adding a profile needs no migration, a profile still used by stored devices but
-- gone from the code stays as `available = false` (those devices get a typed failure at run time),
-- and the refusal can name the profiles that are available.
CREATE TABLE devices.profiles (
    name       text PRIMARY KEY,
    available  boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO devices.profiles (name, available) SELECT DISTINCT profile, false FROM devices.devices
ON CONFLICT DO NOTHING;
ALTER TABLE devices.devices
    ADD CONSTRAINT devices_profile_fkey FOREIGN KEY (profile) REFERENCES devices.profiles (name) ON UPDATE CASCADE;

-- A new or re-profiled device must use a profile the code knows now.
CREATE FUNCTION devices.check_device_profile() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM devices.profiles WHERE name = NEW.profile AND available) THEN
        RAISE EXCEPTION 'device %: unknown profile %; known profiles: %', NEW.id, quote_literal(NEW.profile),
            coalesce((SELECT string_agg(name, ', ' ORDER BY name) FROM devices.profiles WHERE available), '(none)')
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER devices_profile_known BEFORE INSERT OR UPDATE OF profile ON devices.devices
    FOR EACH ROW EXECUTE FUNCTION devices.check_device_profile();

-- Unit ids: 1..247 (Modbus over Serial Line v1.02 §2.2; 0 is broadcast, 248..255 reserved), or 0/255
-- for a meter reached directly over TCP (Modbus TCP/IP Implementation Guide v1.0b §4.4.2).
-- Constraints are added NOT VALID and then validated: rows stored before this migration that break
-- them are kept (the poll loop refuses them one by one with a reason), while every new row is checked.
ALTER TABLE devices.devices
    ADD CONSTRAINT devices_unit_id_modbus CHECK (unit_id BETWEEN 1 AND 247 OR unit_id IN (0, 255)) NOT VALID,
    ADD CONSTRAINT devices_modbus_needs_unit CHECK (protocol <> 'modbus_tcp' OR unit_id IS NOT NULL) NOT VALID,
    ADD CONSTRAINT devices_id_printable CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$') NOT VALID;

-- 0 and 255 address "the device at this IP": never one of several devices behind a gateway.
CREATE FUNCTION devices.check_direct_unit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cid text := NEW.connection_id;
BEGIN
    IF cid IS NOT NULL AND EXISTS (
        SELECT 1 FROM devices.devices WHERE connection_id = cid
        HAVING count(*) > 1 AND bool_or(unit_id IN (0, 255))) THEN
        RAISE EXCEPTION 'connection %: unit id 0 or 255 only addresses a single meter reached directly over TCP; '
            'devices behind a gateway use 1..247', cid USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER devices_direct_unit AFTER INSERT OR UPDATE OF unit_id, connection_id ON devices.devices
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION devices.check_direct_unit();

-- Connections: bounds of meterray.config (poll interval 0.1 s .. 1 day, timeout 0.05 .. 60 s and
-- shorter than the interval, the latter already in 0001), a host that can be a host name or address.
ALTER TABLE devices.connections
    ADD CONSTRAINT connections_poll_interval_bounds CHECK (poll_interval_s BETWEEN 0.1 AND 86400) NOT VALID,
    ADD CONSTRAINT connections_timeout_bounds CHECK (timeout_s BETWEEN 0.05 AND 60) NOT VALID,
    ADD CONSTRAINT connections_host_form CHECK (host ~ '^[A-Za-z0-9.:_\[\]-]{1,253}$') NOT VALID,
    ADD CONSTRAINT connections_id_printable CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$') NOT VALID;

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
             WHERE conname IN ('devices_unit_id_modbus', 'devices_modbus_needs_unit', 'devices_id_printable',
                               'connections_poll_interval_bounds', 'connections_timeout_bounds',
                               'connections_host_form', 'connections_id_printable') LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', c.tbl, c.conname);
        EXCEPTION WHEN check_violation THEN
            RAISE WARNING '% on %: stored rows break it; they stay, new rows are checked', c.conname, c.tbl;
        END;
    END LOOP;
END $$;

-- The supervisor LISTENs here and reconciles when connections or devices change.
CREATE FUNCTION devices.notify_config_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meterray_devices_changed', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER connections_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON devices.connections
    FOR EACH STATEMENT EXECUTE FUNCTION devices.notify_config_changed();
CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON devices.devices
    FOR EACH STATEMENT EXECUTE FUNCTION devices.notify_config_changed();
