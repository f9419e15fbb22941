"""ZeroMQ transport used by the asyncio driver."""
