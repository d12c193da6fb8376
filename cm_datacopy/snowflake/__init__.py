"""The Snowflake side: sessions, the chunk's scan, table metadata, boundaries, profiles. Reads only."""
