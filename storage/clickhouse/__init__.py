"""The analytics copy in ClickHouse: schema, writes and aggregate queries (clickhouse-connect, chdb:// or http://)."""
