//! Subcommands of the `latchkey` binary. Each module owns its clap `Args` and a `run` function;
//! `main.rs` only dispatches.

pub mod agent;
pub mod audit;
pub mod backup;
pub mod cert;
pub mod check;
pub mod client;
pub mod cluster;
pub mod hash_secret;
pub mod import;
pub mod keys;
pub mod passphrase;
pub mod remote;
pub mod revoke;
pub mod serve;
