"""The real server process of the end-to-end tests (``bench.server``, shared with the
benchmarks, which do not import the tests)."""

from bench.server import ADMIN_PASSWORD, API_TOKEN, EXAMPLES, Server, free_port

__all__ = ["ADMIN_PASSWORD", "API_TOKEN", "EXAMPLES", "Server", "free_port"]
