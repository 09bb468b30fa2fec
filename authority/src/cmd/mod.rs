//! Subcommands of the `latchkey` binary. Each module owns its clap `Args` and a `run` function;
//! `main.rs` only dispatches.
