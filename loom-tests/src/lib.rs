//! loom models of photofinish protocols live in `tests/`; this crate has no code of its own.
