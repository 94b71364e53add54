-- The cabinet counts the viewer's unread notifications on every page (the navigation's badge, through
-- storage/postgres/notify_cabinet.unread_count: `user_id = $1 AND read_at IS NULL`). The list's index
-- (user_id, (read_at IS NOT NULL), id DESC) serves that count by user_id only and reads every one of the
-- user's notifications, read ones included, from the table; this partial index holds the unread ones
-- only, so the count is an index-only scan over them (measured on 200,000 notifications, a user with
-- 1,000 of them: a bitmap heap scan of 1,000 blocks without it, an index-only scan with no heap fetch with it).
CREATE INDEX IF NOT EXISTS notifications_unread ON notify.notifications (user_id) WHERE read_at IS NULL;
