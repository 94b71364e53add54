"""Partner HTTP APIs: requests, pagination, JSON/CSV/XML answers and their mapping to readings (pure,
except client.py, which moves the bytes)."""
