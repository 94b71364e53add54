-- Backfills asked for by the gap scan (actors/backfill.py): a gap in a partner device's half-hours
-- becomes a partners.backfills row naming the device and the quantity it was asked for; rows an
-- operator adds through the API leave both NULL (a whole path's range, every device).
ALTER TABLE partners.backfills ADD COLUMN device_id text, ADD COLUMN quantity text,
    ADD CONSTRAINT backfills_device_quantity_together CHECK ((device_id IS NULL) = (quantity IS NULL));

-- The scan asks again for every gap on every run until it is filled: one open row per gap. The
-- consumer's own check (storage/postgres/partners.request_backfill) also skips ranges an open or a
-- recently finished row covers; this index is the guarantee for the exact range.
CREATE UNIQUE INDEX backfills_open_gap ON partners.backfills (device_id, quantity, since, until)
    WHERE device_id IS NOT NULL AND status IN ('pending', 'running');
CREATE INDEX backfills_device ON partners.backfills (device_id, quantity, until) WHERE device_id IS NOT NULL;

-- A partner's devices take its `backfill_window_s` when it is saved (default 7 days). Partners stored
-- before it existed read as the default, so their devices get it now, as if saved again.
UPDATE devices.devices d SET backfill_window = interval '7 days'
FROM partners.devices p JOIN partners.partners pp ON pp.id = p.partner_id
WHERE d.id = p.device_id AND d.protocol = 'partner_http' AND d.backfill_window IS NULL
  AND NOT (pp.config ? 'backfill_window_s');
