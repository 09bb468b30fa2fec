//! `latchkey cluster import`: a stopped single-node data directory into a fresh etcd cluster
//! (every row, the meta and the CA), so its nodes serve what the single node served. Needs a
//! build with the cargo feature `etcd`; any other build refuses, naming it.
//!
//! Exit codes: 0 imported, 2 could not import (nothing served depends on a refused import:
//! an interrupted one leaves a marker that keeps nodes from starting until it is rerun).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::store::StoreEngine;

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Move a stopped single-node data directory into a fresh etcd cluster: every row, the
    /// meta (master key id) and the CA. The cluster must hold no rows; an interrupted import
    /// is finished by running it again. Every node then needs the data directory's
    /// master.key.
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The single node's data directory (holds latchkey.redb, master.key and the CA); its
    /// server must be stopped.
    #[arg(long, value_name = "DIR")]
    pub from_data_dir: PathBuf,
    /// The etcd cluster to import into.
    #[arg(long, value_name = "etcd://HOST:PORT[,...]")]
    pub store: StoreEngine,
    #[command(flatten)]
    pub etcd_tls: crate::config::EtcdTlsArgs,
    #[command(flatten)]
    pub passphrase: super::passphrase::PassphraseArgs,
    /// Refused: a passphrase on the command line shows in `ps`. Use --passphrase-file or
    /// LATCHKEY_PASSPHRASE.
    #[arg(long = "passphrase", hide = true, allow_hyphen_values = true)]
    pub passphrase_value: Option<String>,
}

pub fn run(args: &ClusterArgs) -> ExitCode {
    match &args.command {
        ClusterCommand::Import(a) => match import(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("latchkey cluster import: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// Deadline of each etcd request.
#[cfg(feature = "etcd")]
const ETCD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn import(args: &ImportArgs) -> Result<(), String> {
    args.store.check_built()?;
    let StoreEngine::Etcd { endpoints } = &args.store else {
        return Err(format!(
            "--store {}: import moves a data directory into an etcd cluster; give \
             --store etcd://HOST:PORT[,...]",
            args.store
        ));
    };
    if args.passphrase_value.is_some() {
        return Err(
            "--passphrase is not accepted (a command line shows in `ps`); use \
                    --passphrase-file FILE (`-` for standard input) or LATCHKEY_PASSPHRASE"
                .into(),
        );
    }
    #[cfg(feature = "etcd")]
    {
        use crate::store::StoreError;
        use crate::store::etcd::Cluster;
        use crate::store::etcd::migrate::{CaImport, import_data_dir};
        let key = args.passphrase.key_options().map_err(|e| e.to_string())?;
        let tls = args.etcd_tls.load()?;
        let cluster = Cluster::connect(endpoints, ETCD_TIMEOUT, &tls).map_err(|e| e.to_string())?;
        let report = import_data_dir(&cluster, &args.from_data_dir, &key).map_err(|e| match e {
            StoreError::Locked(p) => format!(
                "{} is in use by a running server: stop it first (an import copies a \
                     data directory that no longer changes)",
                p.display()
            ),
            e => e.to_string(),
        })?;
        if report.resumed {
            println!("finished an interrupted import (its rows were written again)");
        }
        println!(
            "imported {} into etcd://{}: {} rows, {} bytes, {} transactions, {:.1} s",
            args.from_data_dir.display(),
            endpoints.join(","),
            report.rows,
            report.bytes,
            report.txns,
            report.elapsed.as_secs_f64()
        );
        match report.ca {
            CaImport::Published => println!("the data directory's CA is now the cluster's"),
            CaImport::AlreadyThere => println!("the cluster already had the data directory's CA"),
            CaImport::NoCa => println!(
                "the data directory has no CA of its own: the first node makes the cluster's"
            ),
        }
        println!(
            "every node needs {}; start the nodes with --store etcd://{}",
            args.from_data_dir.join(crate::store::KEY_FILE).display(),
            endpoints.join(",")
        );
        Ok(())
    }
    #[cfg(not(feature = "etcd"))]
    {
        // `check_built` refused already; this only keeps the build without the feature whole.
        let _ = endpoints;
        Err(format!("store {}: not built", args.store))
    }
}
