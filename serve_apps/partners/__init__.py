"""Partners HTTP API: partner configurations, dry runs, backfills and webhook pushes."""
