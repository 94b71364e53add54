"""The web cabinet: server-rendered pages at / beside the API (see app.py)."""
