//! `latchkey backup`: a consistent snapshot of the database, also while the server runs.
//!
//! The server opens its database in redb's single-writer mode, so this command opens the same
//! file read-only from its own process and copies one MVCC snapshot into `--out`. The master
//! key is deliberately not part of the backup: keep `master.key` (which never changes) in a
//! separate, safer place; a backup without it reveals no sealed secret.
//!
//! With `--store etcd://…` (a build with the cargo feature `etcd`) it backs up a cluster
//! instead: every row read at one etcd revision, written as a single-node database that opens
//! with the cluster's `master.key`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::store::{self, StoreEngine};

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The data directory (holds `latchkey.redb` and `master.key`).
    #[arg(long, env = "LATCHKEY_DATA_DIR", required_unless_present = "store")]
    pub data_dir: Option<PathBuf>,
    /// Back up an etcd cluster instead of a data directory: every row at one etcd revision,
    /// as a single-node database (restore = the file renamed to latchkey.redb beside the
    /// cluster's master.key).
    #[arg(long, value_name = "etcd://HOST:PORT[,...]")]
    pub store: Option<StoreEngine>,
    #[command(flatten)]
    pub etcd_tls: crate::config::EtcdTlsArgs,
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
    if !matches!(args.store, Some(StoreEngine::Etcd { .. }))
        && args.etcd_tls != crate::config::EtcdTlsArgs::default()
    {
        eprintln!("latchkey backup: --etcd-ca, --etcd-cert and --etcd-key need --store etcd://");
        return ExitCode::from(2);
    }
    let dir = match (&args.store, &args.data_dir) {
        (Some(StoreEngine::Etcd { .. }), Some(dir)) => {
            eprintln!(
                "latchkey backup: --store etcd://… backs up the cluster and --data-dir (or \
                 LATCHKEY_DATA_DIR) {} a single node: give one of them",
                dir.display()
            );
            return ExitCode::from(2);
        }
        (Some(engine @ StoreEngine::Etcd { .. }), None) => return cluster(engine, args),
        (_, Some(dir)) => dir,
        (_, None) => {
            eprintln!("latchkey backup: --store redb needs --data-dir");
            return ExitCode::from(2);
        }
    };
    match store::backup_data_dir(dir, &args.out) {
        Ok(report) => {
            println!(
                "backup written to {} ({} rows, {} bytes)",
                args.out.display(),
                report.rows,
                report.bytes
            );
            note_key();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("latchkey backup: {e}");
            ExitCode::from(2)
        }
    }
}

fn note_key() {
    println!(
        "note: {} is not included; back it up separately (restore = backup file renamed to {} + key file)",
        store::KEY_FILE,
        store::DB_FILE
    );
}

/// Deadline of each etcd request.
#[cfg(feature = "etcd")]
const ETCD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `--store etcd://…`.
fn cluster(engine: &StoreEngine, args: &BackupArgs) -> ExitCode {
    if let Err(e) = engine.check_built() {
        eprintln!("latchkey backup: {e}");
        return ExitCode::from(2);
    }
    #[cfg(feature = "etcd")]
    {
        use crate::store::etcd::{Cluster, migrate};
        let StoreEngine::Etcd { endpoints } = engine else {
            return ExitCode::from(2);
        };
        let tls = match args.etcd_tls.load() {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("latchkey backup: {e}");
                return ExitCode::from(2);
            }
        };
        let result = Cluster::connect(endpoints, ETCD_TIMEOUT, &tls)
            .and_then(|c| migrate::backup_cluster(&c, &args.out));
        match result {
            Ok(report) => {
                println!(
                    "backup of etcd://{} at revision {} written to {} ({} rows, {} bytes)",
                    endpoints.join(","),
                    report.revision,
                    args.out.display(),
                    report.rows,
                    report.bytes
                );
                note_key();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("latchkey backup: {e}");
                ExitCode::from(2)
            }
        }
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = args;
        ExitCode::from(2)
    }
}
