//! The Latchkey authority: everything that touches the outside world.
//!
//! `latchkey_core` mints and verifies tokens without I/O; this crate gives it a durable home
//! (`store`, one redb file), a transport (`http`, a hand-written mio + rustls event loop) and
//! the command-line tool (`cmd`, glued together by `main.rs`). Errors from every layer fold into
//! [`error::Error`], and [`error::WireError::from`] is the one place that decides what goes on
//! the wire.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod app;
pub mod clock;
#[cfg(feature = "etcd")]
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod credentials;
pub mod error;
pub mod http;
pub mod permissions;
pub mod pki;
pub mod refusal_audit;
pub mod replay_log;
pub mod store;
pub mod tls;
