"""Assembly: the CLI, the runtime (Ray, the supervisor, the Serve apps) and the demo.

The one place that wires actors and serve_apps together; nothing below imports it.
"""
