-- Connections managed over HTTP (/api/v1/connections, issue 6 item 3): who owns each one, every version
-- of it, and one id per connection across both kinds.

-- Organisations own connections as they own devices (migration 0011): by id only, no foreign key (auth
-- is another service's schema). NULL: a connection nobody owns yet (registered by an operator of the
-- platform, `meterray register`, the demo), visible to platform staff only. A connection's devices
-- carry the same organisation.
ALTER TABLE devices.connections ADD COLUMN organisation_id uuid;
ALTER TABLE devices.mqtt_connections ADD COLUMN organisation_id uuid;
CREATE INDEX connections_organisation ON devices.connections (organisation_id, id);
CREATE INDEX mqtt_connections_organisation ON devices.mqtt_connections (organisation_id, id);

-- Every version of a connection stored through the API, as partners.partner_versions: what was
-- configured when, and by whom (the user id of the access token). `config` is the document as the
-- API returns it (kind, settings, devices with their names); NULL marks the deletion.
CREATE TABLE devices.connection_versions (
    connection_id   text NOT NULL,
    version         integer NOT NULL CHECK (version >= 1),
    kind            text NOT NULL CHECK (kind IN ('modbus_tcp', 'mqtt')),
    config          jsonb,
    organisation_id uuid,
    changed_by      uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, version)
);

-- `/api/v1/connections/{id}` names one connection: an id is either a Modbus or an MQTT connection,
-- never both (the API checks it under a lock; this refuses it for plain SQL as well).
CREATE FUNCTION devices.check_connection_id_free() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_TABLE_NAME = 'connections' AND EXISTS (SELECT 1 FROM devices.mqtt_connections WHERE id = NEW.id))
        OR (TG_TABLE_NAME = 'mqtt_connections' AND EXISTS (SELECT 1 FROM devices.connections WHERE id = NEW.id)) THEN
        RAISE EXCEPTION 'connection id % is taken by a connection of the other kind', quote_literal(NEW.id)
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER connections_id_free BEFORE INSERT ON devices.connections
    FOR EACH ROW EXECUTE FUNCTION devices.check_connection_id_free();
CREATE TRIGGER mqtt_connections_id_free BEFORE INSERT ON devices.mqtt_connections
    FOR EACH ROW EXECUTE FUNCTION devices.check_connection_id_free();
