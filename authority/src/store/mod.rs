//! The durable store: one redb file. See `authority/src/store/DESIGN.md`.
