-- Two changes that make the writers' statements cheaper for PostgreSQL (measured 2026-11-26 on
-- PostgreSQL 15, a database created with --locale=C.UTF-8, 40,000 readings per statement).

-- 1. Reading keys compare byte by byte. Device ids and OBIS codes are identifiers, not words: nobody
-- sorts them by language rules, and the "C" collation lets PostgreSQL compare them with memcmp
-- instead of the C library's strcoll. Every archive insert walks the primary-key index and the
-- writer sorts each batch on the key: about 15 % less time per insert.
ALTER TABLE monitoring.readings
    ALTER COLUMN device_id TYPE text COLLATE "C",
    ALTER COLUMN quantity TYPE text COLLATE "C";
ALTER TABLE monitoring.readings_current
    ALTER COLUMN device_id TYPE text COLLATE "C",
    ALTER COLUMN quantity TYPE text COLLATE "C";

-- 2. Room for in-place (HOT) updates. Every poll updates each current value and each device's
-- checkpoint; on full pages only 6 % of those updates were HOT, the rest wrote a new index entry
-- too. With half of each page free, all of them are HOT: 40,000 current-value upserts took 130 ms
-- instead of 260-740 ms. CLUSTER rewrites the existing rows with that room.
ALTER TABLE monitoring.readings_current SET (fillfactor = 50);
ALTER TABLE devices.device_state SET (fillfactor = 50);
CLUSTER monitoring.readings_current USING readings_current_pkey;
CLUSTER devices.device_state USING device_state_pkey;
