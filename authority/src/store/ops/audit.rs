//! Audit entries: every field bounded, refusals recorded with their message, and `Audit`, the
//! op that records an event the store does not see itself.

use super::{Plan, StoreError, Tables, WriteOutcome};
use crate::store::codec;
use crate::store::records::*;

/// Longest text kept in one audit field (actor, event, subject, refusal message), in bytes.
pub const MAX_AUDIT_FIELD_BYTES: usize = 1024;

/// Appends an audit entry for an event the store does not see itself.
pub(super) fn record(
    t: &Tables<'_>,
    p: &mut Plan,
    actor: &str,
    event: &str,
    subject: &str,
    outcome: AuditOutcome,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    p.entry = Some(AuditInfo {
        outcome: Some(outcome),
        ..AuditInfo::new(actor, event, subject, now)
    });
    // Nothing else to plan: `apply` appends the entry, as for every audited op, under the
    // sequence number read here (the next one; ops apply one at a time).
    Ok(WriteOutcome::Audit { seq: t.next_audit })
}

/// Audit facts of an op, taken (bounded) before it is consumed.
#[derive(Debug)]
pub(super) struct AuditInfo {
    actor: String,
    event: String,
    subject: String,
    at: u64,
    /// The outcome an explicit [`WriteOp::Audit`](super::WriteOp::Audit) records; other ops
    /// record their own result.
    outcome: Option<AuditOutcome>,
}

impl AuditInfo {
    /// An entry recording the op's own result, every field bounded.
    pub(super) fn new(actor: &str, event: &str, subject: &str, at: u64) -> Self {
        AuditInfo {
            actor: audit_text(actor),
            event: audit_text(event),
            subject: audit_text(subject),
            at,
            outcome: None,
        }
    }

    /// The same entry under another event name (an outcome that is an event of its own).
    pub(super) fn rename(&mut self, event: &str) {
        self.event = audit_text(event);
    }

    /// The entry for sequence number `seq`, encoded. Every field is bounded first, so the
    /// entry fits a record whatever the op carried.
    pub(super) fn encode(
        self,
        seq: u64,
        result: &Result<WriteOutcome, StoreError>,
    ) -> Result<Vec<u8>, StoreError> {
        let outcome = match (self.outcome, result) {
            (Some(AuditOutcome::Refused(m)), _) => AuditOutcome::Refused(audit_text(&m)),
            (Some(AuditOutcome::Success), _) | (None, Ok(_)) => AuditOutcome::Success,
            (None, Err(e)) => AuditOutcome::Refused(audit_text(&e.to_string())),
        };
        codec::encode(&AuditRecord {
            seq,
            at: self.at,
            actor: self.actor,
            event: self.event,
            subject: self.subject,
            outcome,
        })
    }
}

/// `s` as one audit field: at most [`MAX_AUDIT_FIELD_BYTES`] (cut at a character boundary and
/// marked with `…`), control characters replaced, so an entry always fits a record and prints
/// on one line. The audit log keeps what was attempted even when the attempt was oversized.
pub(super) fn audit_text(s: &str) -> String {
    const MARK: char = '…';
    let mut out = String::new();
    // Reads only what can be kept (plus one character to know whether anything was cut).
    for c in s.chars() {
        out.push(if c.is_control() {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        });
        if out.len() > MAX_AUDIT_FIELD_BYTES {
            break;
        }
    }
    if out.len() > MAX_AUDIT_FIELD_BYTES {
        let mut end = MAX_AUDIT_FIELD_BYTES - MARK.len_utf8();
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push(MARK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_text_is_bounded_single_line_and_marks_cuts() {
        let check = |input: &str, want: &str| assert_eq!(audit_text(input), want, "{input:?}");
        check("admin", "admin");
        check("a\nb\u{0}c", "a\u{FFFD}b\u{FFFD}c");
        let exact = "x".repeat(MAX_AUDIT_FIELD_BYTES);
        check(&exact, &exact);
        for input in [
            "x".repeat(300 * 1024),
            "é".repeat(MAX_AUDIT_FIELD_BYTES),
            "\n".repeat(MAX_AUDIT_FIELD_BYTES),
        ] {
            let got = audit_text(&input);
            assert!(got.len() <= MAX_AUDIT_FIELD_BYTES, "{} bytes", got.len());
            assert!(got.ends_with('…'));
            assert!(!got.chars().any(char::is_control));
        }
    }
}
