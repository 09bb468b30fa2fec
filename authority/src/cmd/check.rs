//! `latchkey check`: redb's integrity check, the schema version, and every record decoded and
//! every sealed secret opened, with a row count per table. Needs the server stopped (it opens
//! the database for writing so redb can verify and repair its allocator state); on a live
//! server, check a `latchkey backup` instead.
//!
//! Exit codes: 0 clean, 1 problems found, 2 could not check (missing, locked, wrong key).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::store;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The data directory (holds `latchkey.redb` and `master.key`).
    #[arg(long, env = "LATCHKEY_DATA_DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub passphrase: super::passphrase::PassphraseArgs,
    /// Refused: a passphrase on the command line shows in `ps`. Use --passphrase-file or
    /// LATCHKEY_PASSPHRASE.
    #[arg(long = "passphrase", hide = true, allow_hyphen_values = true)]
    pub passphrase_value: Option<String>,
}

pub fn run(args: &CheckArgs) -> ExitCode {
    if args.passphrase_value.is_some() {
        eprintln!(
            "latchkey check: --passphrase is not accepted (a command line shows in `ps`); use \
             --passphrase-file FILE (`-` for standard input) or LATCHKEY_PASSPHRASE"
        );
        return ExitCode::from(2);
    }
    let key = match args.passphrase.key_options() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("latchkey check: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match store::check_data_dir(&args.data_dir, &key) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("latchkey check: {e}");
            if matches!(e, store::StoreError::Locked(_)) {
                eprintln!("hint: stop the server, or run `latchkey backup` and check the copy");
            }
            return ExitCode::from(2);
        }
    };
    println!("data directory: {}", args.data_dir.display());
    println!(
        "schema version: {} (this release: {})",
        report.schema_version,
        store::SCHEMA_VERSION
    );
    println!("master key id:  {}", report.key_id);
    println!(
        "redb integrity: {}",
        if report.integrity_clean {
            "ok"
        } else {
            "damaged, repaired"
        }
    );
    println!("{:<20} {:>12} {:>8}", "table", "rows", "bad");
    for t in &report.tables {
        println!("{:<20} {:>12} {:>8}", t.name, t.rows, t.bad);
    }
    if report.is_ok() {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!("{} problem(s) found", report.problems.len());
        ExitCode::from(1)
    }
}
