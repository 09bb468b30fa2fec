//! Audit retention: [`WriteOp::PruneAudit`](super::WriteOp::PruneAudit) removes the oldest
//! audit rows, by age and by count, in bounded batches.
//!
//! Only a prefix is ever removed (from the lowest `seq` up, stopping at the first row that is
//! neither too old nor beyond the count), so the retained rows keep dense, increasing sequence
//! numbers and a reader's cursor (`seq > after`) stays valid. The newest row is never removed,
//! so the next sequence number (the last one + 1) never goes back. A prune that removed rows
//! is audited as one `audit.prune` row naming the range.

use redb::{ReadableTable, ReadableTableMetadata};

use super::{Mutation, Plan, Tables, WriteOutcome};
use crate::store::codec;
use crate::store::error::{DbResult, StoreError};
use crate::store::records::{AuditOutcome, AuditRecord};

/// What to prune. Each limit is optional; a row goes if either applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneAudit {
    /// Rows recorded before this Unix time go.
    pub before_time: Option<u64>,
    /// Rows beyond this many (the oldest first) go.
    pub max_rows: Option<u64>,
    /// Most rows this op removes (one bounded transaction).
    pub batch: u64,
    pub by: String,
    pub now: u64,
}

/// Plans the removal of the oldest rows `req` names.
pub(crate) fn plan(
    t: &Tables<'_>,
    p: &mut Plan,
    req: &PruneAudit,
) -> Result<WriteOutcome, StoreError> {
    let len = t.audit.len().db("count audit")?;
    let mut range: Option<(u64, u64)> = None;
    let mut removed = 0u64;
    for entry in t.audit.iter().db("read audit")? {
        // The newest row stays: the next sequence number is derived from it.
        if removed >= req.batch || removed + 1 >= len {
            break;
        }
        let (k, v) = entry.db("read audit")?;
        let over_count = req.max_rows.is_some_and(|m| len - removed > m);
        let too_old = match req.before_time {
            Some(before) if !over_count => codec::decode::<AuditRecord>(v.value())?.at < before,
            _ => false,
        };
        if !(over_count || too_old) {
            break;
        }
        let seq = k.value();
        range = Some((range.map_or(seq, |(first, _)| first), seq));
        removed += 1;
    }
    if let Some((first, last)) = range {
        p.push(Mutation::DelAudit(first, last));
        p.audits.push(AuditRecord {
            seq: 0,
            at: req.now,
            actor: req.by.clone(),
            event: "audit.prune".into(),
            subject: format!("removed={removed} seq={first}..={last}"),
            outcome: AuditOutcome::Success,
        });
    }
    Ok(WriteOutcome::AuditPruned { removed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions, WriteOp};

    fn audit(store: &Store, at: u64) -> u64 {
        match store.write(WriteOp::Audit {
            actor: "a".into(),
            event: "e".into(),
            subject: "s".into(),
            outcome: AuditOutcome::Success,
            now: at,
        }) {
            Ok(WriteOutcome::Audit { seq }) => seq,
            other => panic!("{other:?}"),
        }
    }

    fn prune(store: &Store, before_time: Option<u64>, max_rows: Option<u64>, batch: u64) -> u64 {
        match store.write(WriteOp::PruneAudit(PruneAudit {
            before_time,
            max_rows,
            batch,
            by: "system".into(),
            now: 1_000,
        })) {
            Ok(WriteOutcome::AuditPruned { removed }) => removed,
            other => panic!("{other:?}"),
        }
    }

    fn seqs(store: &Store) -> Vec<(u64, String)> {
        let rows = store.read().unwrap().audit(0, 1000).unwrap();
        rows.into_iter().map(|r| (r.seq, r.event)).collect()
    }

    #[test]
    fn the_oldest_rows_go_by_age_and_count_and_the_rest_stay_dense() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path(), StoreOptions::default()).unwrap();
        for at in 1..=10 {
            assert_eq!(audit(&store, at * 10), at);
        }
        // Age: rows at 10, 20, 30 are before 35; batches of 2 take two ops.
        assert_eq!(prune(&store, Some(35), None, 2), 2);
        assert_eq!(prune(&store, Some(35), None, 2), 1);
        assert_eq!(prune(&store, Some(35), None, 2), 0, "nothing left to prune");
        let kept = seqs(&store);
        assert_eq!(kept.first().unwrap().0, 4);
        // Each prune that removed rows left one `audit.prune` row, numbered after the rest.
        assert_eq!(
            &kept[7..],
            &[(11, "audit.prune".into()), (12, "audit.prune".into())]
        );
        assert!(kept.windows(2).all(|w| w[1].0 == w[0].0 + 1), "dense");
        // Count: 9 rows, keep 5 (the prune's own row makes 6).
        assert_eq!(prune(&store, None, Some(5), 100), 4);
        let kept = seqs(&store);
        assert_eq!(kept.len(), 6);
        assert_eq!(kept.first().unwrap().0, 8);
        assert_eq!(kept.last().unwrap(), &(13, "audit.prune".into()));
        // New rows continue the sequence.
        assert_eq!(audit(&store, 2_000), 14);
    }

    #[test]
    fn the_newest_row_is_never_pruned_so_the_sequence_never_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path(), StoreOptions::default()).unwrap();
        for at in 1..=3 {
            audit(&store, at);
        }
        assert_eq!(prune(&store, Some(u64::MAX), Some(0), 100), 2);
        assert_eq!(prune(&store, Some(u64::MAX), Some(0), 100), 1);
        // Only the prunes' own rows are left; the next row follows them.
        assert_eq!(
            seqs(&store),
            vec![(4, "audit.prune".into()), (5, "audit.prune".into())]
        );
        assert_eq!(audit(&store, 9), 6);
    }
}
