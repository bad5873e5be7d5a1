//! HTTP API target tests (being written).
