//! PostgreSQL target tests (being written).
