"""Modbus TCP: meter profiles (data), block planner, pure codec and the asyncio transport."""
