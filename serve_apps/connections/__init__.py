"""Connections HTTP API: Modbus and MQTT connections and their devices, validated, versioned, dry runs."""
