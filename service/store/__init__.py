"""Storage: the database engine (SQLite or PostgreSQL), the tables, and the Alembic migrations that make them."""
