-- The input position of a device's checkpoint names its topic as well: offsets of another topic
-- (one recreated, or read under another prefix) are not comparable, and comparing them skipped every
-- item of the new topic as "already applied". NULL: a checkpoint written before this column.
ALTER TABLE devices.device_state ADD COLUMN source_topic text;
