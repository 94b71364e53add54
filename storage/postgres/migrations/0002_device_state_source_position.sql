-- The device processor's checkpoint keeps the input position (Kafka partition of readings.raw and
-- offset) of the last item it applied to the device, so a batch replayed after a crash between
-- checkpoint and commit, or retried after a failed write, is never applied twice (issue 5, item 4).
ALTER TABLE devices.device_state
    ADD COLUMN source_partition integer,
    ADD COLUMN source_offset    bigint,
    ADD CONSTRAINT device_state_source_position CHECK ((source_partition IS NULL) = (source_offset IS NULL));
