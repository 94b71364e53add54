-- Organisations own devices (users issue, item 3). By id only, no foreign key: auth and devices are
-- separate services' schemas (DESIGN.md) that could live in separate databases later. NULL: a device
-- nobody owns yet (registered by an operator), visible to platform staff only.
ALTER TABLE devices.devices ADD COLUMN organisation_id uuid;
CREATE INDEX devices_organisation ON devices.devices (organisation_id, id);
