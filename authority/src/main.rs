//! `latchkey`: thin glue over the `latchkey_authority` library. Each subcommand lives in
//! `latchkey_authority::cmd`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about = "An offline credential authority")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {}
}
