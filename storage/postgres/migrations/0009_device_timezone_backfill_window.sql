-- Consumption (half-hour interval energy) is computed in each device's own time zone: Russia spans
-- eleven, and the commercial half-hours and days are local. NULL: the METERRAY_DEFAULT_TIMEZONE
-- setting (Europe/Moscow unless set), resolved when read, so changing the setting moves every
-- device that has no zone of its own.
ALTER TABLE devices.devices ADD COLUMN timezone text;

-- How far back the device's source can send readings again (a partner API's history, a meter's own
-- load profile). A gap in the half-hours within this window is published as a backfill request on
-- the `backfill-requests` topic. NULL: the source cannot resend anything (a Modbus register holds
-- only its present value), so such gaps are only estimated.
ALTER TABLE devices.devices ADD COLUMN backfill_window interval,
    ADD CONSTRAINT devices_backfill_window_positive CHECK (backfill_window IS NULL OR backfill_window > interval '0');

-- A zone must be an IANA name PostgreSQL knows (the same tz database Python's zoneinfo reads, which
-- checks it at the edge first): a mistyped zone would shift every half-hour of the device.
CREATE FUNCTION devices.check_device_timezone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.timezone IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = NEW.timezone) THEN
            RAISE EXCEPTION 'device %: unknown time zone %; use an IANA name such as Europe/Moscow',
                NEW.id, quote_literal(NEW.timezone) USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER devices_timezone_known BEFORE INSERT OR UPDATE OF timezone ON devices.devices
    FOR EACH ROW EXECUTE FUNCTION devices.check_device_timezone();
