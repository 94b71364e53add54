"""Unisender Go (transactional e-mail): the `email/send.json` client and the webhook's format."""
