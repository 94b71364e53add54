-- MQTT connections (issue item 1): one subscription on one broker each, read by `subscribers` shard
-- actors sharing it (MQTT 5 shared subscription). Checked by meterray/mqtt_config.py at the edge and
-- by these constraints here. The supervisor LISTENs on the same channel as for Modbus connections.
CREATE TABLE devices.mqtt_connections (
    id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$'),
    host             text NOT NULL CHECK (host ~ '^[A-Za-z0-9.:_\[\]-]{1,253}$'),
    port             integer NOT NULL DEFAULT 1883 CHECK (port BETWEEN 1 AND 65535),
    topic_filter     text NOT NULL CHECK (length(topic_filter) BETWEEN 1 AND 1024),
    share_group      text NOT NULL DEFAULT '' CHECK (share_group ~ '^[A-Za-z0-9._:@-]{0,64}$'),
    subscribers      integer NOT NULL DEFAULT 1 CHECK (subscribers BETWEEN 1 AND 16),
    payload_format   text NOT NULL DEFAULT 'meterray' CHECK (payload_format IN ('meterray', 'json', 'gateway')),
    mapping          jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(mapping) = 'object'),
    auto_register    boolean NOT NULL DEFAULT false,
    inflight         integer NOT NULL DEFAULT 100 CHECK (inflight BETWEEN 1 AND 1000),
    session_expiry_s integer NOT NULL DEFAULT 3600 CHECK (session_expiry_s BETWEEN 0 AND 604800),
    enabled          boolean NOT NULL DEFAULT true,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER mqtt_connections_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON devices.mqtt_connections
    FOR EACH STATEMENT EXECUTE FUNCTION devices.notify_config_changed();

-- Devices reporting over MQTT (registered by hand, or by their first message on a connection with
-- auto_register) have profile 'mqtt' and no Modbus connection; `meterray migrate` keeps the profile
-- available (it is in the list of profiles the code knows, meterray/app/runtime.py).
INSERT INTO devices.profiles (name, available) VALUES ('mqtt', true) ON CONFLICT (name) DO UPDATE SET available = true;
