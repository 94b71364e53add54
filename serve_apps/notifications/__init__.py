"""The notifications service's HTTP API: in-app notifications, channel preferences, Unisender's webhook."""
