//! `latchkey`: thin glue over the `latchkey_authority` library. Each subcommand lives in
//! `latchkey_authority::cmd`.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use latchkey_authority::cmd;

#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about = "An offline credential authority")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the authority's HTTPS server.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Write a consistent snapshot of the database (works while the server runs).
    Backup(cmd::backup::BackupArgs),
    /// Check a stopped server's data directory: integrity, schema, records, counts.
    Check(cmd::check::CheckArgs),
    /// Print the hash of an operator client secret for the settings file.
    HashSecret(cmd::hash_secret::HashSecretArgs),
    /// Manage operator clients.
    Client(cmd::client::ClientArgs),
    /// Manage token signing keys.
    Keys(cmd::keys::KeysArgs),
    /// Manage agents (through a running server).
    Agent(cmd::agent::AgentArgs),
    /// Revoke a token, every token of an agent, or a signing key.
    Revoke(cmd::revoke::RevokeArgs),
    /// Read the audit log.
    Audit(cmd::audit::AuditArgs),
    /// Mutual TLS: the authority's CA, agent certificates, the trust store.
    Cert(cmd::cert::CertArgs),
    /// Authorities sharing one etcd cluster: import a single node's data directory.
    Cluster(cmd::cluster::ClusterArgs),
    /// Write the man pages (latchkey.1 and one per subcommand) into a directory, for packaging.
    #[command(hide = true)]
    Man(ManArgs),
}

#[derive(Debug, clap::Args)]
struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "target/man")]
    out_dir: std::path::PathBuf,
}

/// Renders the man pages from the same clap definitions that parse the command line, so
/// they cannot drift from `--help`.
fn man(args: &ManArgs) -> Result<(), latchkey_authority::error::Error> {
    std::fs::create_dir_all(&args.out_dir)?;
    clap_mangen::generate_to(Cli::command(), &args.out_dir)?;
    Ok(())
}

fn main() -> ExitCode {
    // First, while the process has one thread: no child or later reader of the environment
    // sees the master key's passphrase.
    cmd::passphrase::take_env();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::HashSecret(args) => cmd::hash_secret::run(&args),
        Command::Client(args) => cmd::client::run(&args),
        Command::Keys(args) => cmd::keys::run(&args),
        Command::Agent(args) => cmd::agent::run(&args),
        Command::Revoke(args) => cmd::revoke::run(&args),
        Command::Audit(args) => cmd::audit::run(&args),
        Command::Cert(args) => cmd::cert::run(&args),
        Command::Man(args) => man(&args),
        // Reports its failure in the log format.
        Command::Serve(args) => return cmd::serve::main(*args),
        // These choose their own exit codes (2 = could not run, 1 = problems found).
        Command::Backup(args) => return cmd::backup::run(&args),
        Command::Check(args) => return cmd::check::run(&args),
        Command::Cluster(args) => return cmd::cluster::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkey: {e}");
            ExitCode::FAILURE
        }
    }
}
