//! `latchkey backup`: a consistent snapshot of the database, also while the server runs.
//!
//! The server opens its database in redb's single-writer mode, so this command opens the same
//! file read-only from its own process and copies one MVCC snapshot into `--out`. The master
//! key is deliberately not part of the backup: keep `master.key` (which never changes) in a
//! separate, safer place; a backup without it reveals no sealed secret.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::store;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The data directory (holds `latchkey.redb` and `master.key`).
    #[arg(long, env = "LATCHKEY_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where to write the snapshot (a new file; never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &BackupArgs) -> ExitCode {
    // The store refuses to overwrite too (`create_new`); this says so in the operator's terms.
    if args.out.symlink_metadata().is_ok() {
        eprintln!(
            "latchkey backup: {} exists; remove it or choose another --out",
            args.out.display()
        );
        return ExitCode::from(2);
    }
    match store::backup_data_dir(&args.data_dir, &args.out) {
        Ok(report) => {
            println!(
                "backup written to {} ({} rows, {} bytes)",
                args.out.display(),
                report.rows,
                report.bytes
            );
            println!(
                "note: {} is not included; back it up separately (restore = backup file renamed to {} + key file)",
                store::KEY_FILE,
                store::DB_FILE
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("latchkey backup: {e}");
            ExitCode::from(2)
        }
    }
}
