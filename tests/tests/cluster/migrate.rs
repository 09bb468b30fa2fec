//! `latchkey cluster import` and `latchkey backup --store etcd://…`: a single node's data
//! directory moved into a fresh cluster comes back, row for row, as a single-node database
//! that `latchkey check` passes and a server serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::util::etcd::{EtcdCluster, etcd_or_skip};
use crate::util::https::Authority;
use crate::util::latchkey_bin;

fn latchkey(args: &[&str]) -> Output {
    Command::new(latchkey_bin())
        .args(args)
        .env_remove("LATCHKEY_DATA_DIR")
        .env_remove("LATCHKEY_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("run latchkey")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

const AGENTS: usize = 40;

/// A stopped single node's data directory (CA, admin client, signing keys) with
/// [`AGENTS`] agents imported offline.
fn single_node(root: &Path) -> PathBuf {
    let data = root.join("single");
    Authority::start(&data, None).stop();
    let file = root.join("agents.jsonl");
    let lines: String = (0..AGENTS)
        .map(|i| format!("{{\"entityId\":\"dev-{i:03}\",\"name\":\"Device {i}\"}}\n"))
        .collect();
    std::fs::write(&file, lines).expect("write agents");
    let out = latchkey(&[
        "agent",
        "import",
        "--file",
        p(&file),
        "--data-dir",
        p(&data),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    data
}

/// `latchkey check --data-dir DIR`: rows per table (it must pass).
fn check(dir: &Path) -> BTreeMap<String, u64> {
    let out = latchkey(&["check", "--data-dir", p(dir)]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [name, rows, bad] if bad.parse::<u64>().is_ok() => {
                    Some((name.to_owned(), rows.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

fn import(data: &Path, store: &str) -> Output {
    latchkey(&[
        "cluster",
        "import",
        "--from-data-dir",
        p(data),
        "--store",
        store,
    ])
}

fn backup(store: &str, out: &Path) -> Output {
    latchkey(&["backup", "--store", store, "--out", p(out)])
}

/// A data directory holding `backup` as its database and `from`'s master key (and its admin
/// client file, so the test can ask the server for a token).
fn restore(root: &Path, backup: &Path, from: &Path) -> PathBuf {
    let dir = root.join("restored");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::rename(backup, dir.join("latchkey.redb")).expect("move backup");
    for f in ["master.key", "admin-client.json"] {
        std::fs::copy(from.join(f), dir.join(f)).expect("copy");
    }
    dir
}

#[test]
fn imported_data_dir_comes_back_row_for_row_from_a_cluster_backup() {
    let Some(bin) = etcd_or_skip("imported_data_dir_comes_back_row_for_row_from_a_cluster_backup")
    else {
        return;
    };
    let root = tempfile::tempdir().expect("temp dir");
    let data = single_node(root.path());
    let before = check(&data);
    assert_eq!(before["agents"], AGENTS as u64, "{before:?}");

    let cluster = EtcdCluster::start(&bin);
    let store = format!("etcd://{}", cluster.endpoints());
    let out = import(&data, &store);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let replicated: u64 = before
        .iter()
        .filter(|(t, _)| *t != "meta")
        .map(|(_, n)| n)
        .sum();
    assert!(
        stdout.contains(&format!(": {replicated} rows, ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("the data directory's CA is now the cluster's"),
        "{stdout}"
    );

    // In etcd: the rows, the meta, wseq, the CA, and no marker.
    assert!(cluster.get(1, "/lk/default/t/agents/dev-007").is_some());
    assert_eq!(cluster.get(2, "/lk/default/meta/import"), None);
    assert_eq!(
        cluster.get(0, "/lk/default/meta/wseq"),
        Some(replicated.to_be_bytes().to_vec())
    );
    assert_eq!(
        cluster.get(0, "/lk/default/meta/schema_version"),
        Some(1u64.to_be_bytes().to_vec())
    );
    assert_eq!(
        cluster.get(1, "/lk/default/files/ca.pem"),
        Some(std::fs::read(data.join("ca.pem")).expect("ca.pem"))
    );
    assert_eq!(
        cluster.get(2, "/lk/default/files/ca.key.sealed"),
        Some(std::fs::read(data.join("ca.key.sealed")).expect("ca.key.sealed"))
    );

    // A backup of the cluster is the single node's database again.
    let file = root.path().join("cluster.redb");
    let out = backup(&store, &file);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(" at revision "), "{stdout}");
    assert!(
        stdout.contains(&format!("({replicated} rows, ")),
        "{stdout}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file)
        .expect("backup")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Never over an existing file.
    let again = backup(&store, &file);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("exists"),
        "{}",
        text(&again.stderr)
    );

    let restored = restore(root.path(), &file, &data);
    assert_eq!(check(&restored), before);

    // And a server serves it: the agents are there.
    let auth = Authority::start(&restored, None);
    let token = auth.operator_token();
    for id in ["dev-000", "dev-039"] {
        let r = auth.json(
            "GET",
            &format!("/api/agentmanagement/v3/agents/{id}"),
            Some(&token),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["id"], id, "{}", r.text());
    }
    auth.stop();
}

#[test]
fn import_is_refused_into_a_cluster_with_rows_with_another_master_key_or_a_running_server() {
    let Some(bin) = etcd_or_skip(
        "import_is_refused_into_a_cluster_with_rows_with_another_master_key_or_a_running_server",
    ) else {
        return;
    };
    let root = tempfile::tempdir().expect("temp dir");
    let data = single_node(root.path());

    // A running server holds the data directory.
    let cluster = EtcdCluster::start(&bin);
    let store = format!("etcd://{}", cluster.endpoints());
    let auth = Authority::start(&data, None);
    let out = import(&data, &store);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("in use by a running server: stop it first"),
        "{err}"
    );
    auth.stop();
    assert_eq!(cluster.get(0, "/lk/default/meta/master_key_id"), None);

    // A cluster that holds rows: nothing is written into it.
    cluster.put(0, "/lk/default/t/agents/someone", b"x");
    let out = import(&data, &store);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("already holds 1 rows"), "{err}");
    assert!(err.contains("fresh cluster"), "{err}");
    assert_eq!(cluster.get(1, "/lk/default/meta/master_key_id"), None);
    assert_eq!(cluster.get(1, "/lk/default/meta/import"), None);
    drop(cluster);

    // A cluster claimed by another master key: named, both ids.
    let cluster = EtcdCluster::start(&bin);
    let store = format!("etcd://{}", cluster.endpoints());
    cluster.put(0, "/lk/default/meta/schema_version", &1u64.to_be_bytes());
    cluster.put(
        0,
        "/lk/default/meta/master_key_id",
        b"\x01\x02\x03\x04\x05\x06\x07\x08",
    );
    let out = import(&data, &store);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("every node of a cluster needs the same master.key"),
        "{err}"
    );
    assert!(err.contains("0102030405060708"), "{err}");
    assert!(
        err.contains(&data.join("master.key").display().to_string()),
        "{err}"
    );
    assert_eq!(cluster.get(2, "/lk/default/meta/import"), None);
    assert_eq!(cluster.get(2, "/lk/default/t/agents/dev-000"), None);
}

#[test]
fn an_interrupted_import_blocks_backups_and_is_finished_by_running_it_again() {
    let Some(bin) =
        etcd_or_skip("an_interrupted_import_blocks_backups_and_is_finished_by_running_it_again")
    else {
        return;
    };
    let root = tempfile::tempdir().expect("temp dir");
    let data = single_node(root.path());
    let before = check(&data);
    let cluster = EtcdCluster::start(&bin);
    let store = format!("etcd://{}", cluster.endpoints());
    let out = import(&data, &store);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // As if an import stopped half way: the marker, and a row the data directory lacks.
    cluster.put(0, "/lk/default/meta/import", b"x");
    cluster.put(0, "/lk/default/t/agents/zz-partial", b"x");
    let file = root.path().join("during.redb");
    let out = backup(&store, &file);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("in progress or was interrupted"), "{err}");
    assert!(err.contains("rerun `latchkey cluster import`"), "{err}");
    assert!(!file.exists(), "a refused backup leaves no file");

    let out = import(&data, &store);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("finished an interrupted import"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the cluster already had the data directory's CA"),
        "{stdout}"
    );
    assert_eq!(cluster.get(1, "/lk/default/meta/import"), None);
    assert_eq!(cluster.get(1, "/lk/default/t/agents/zz-partial"), None);

    let out = backup(&store, &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let restored = restore(root.path(), &file, &data);
    assert_eq!(check(&restored), before);

    // Without a marker a second import is refused: the cluster holds rows now.
    let out = import(&data, &store);
    assert!(
        text(&out.stderr).contains("already holds"),
        "{}",
        text(&out.stderr)
    );
}
