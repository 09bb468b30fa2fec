//! Typed answers to writes: each op answers with one shape of [`WriteOutcome`], and
//! [`FromOutcome`] takes that shape out, so a caller names the record it expects
//! (`outcome.into_record::<AgentRecord>()`) instead of matching the enum and handling "cannot
//! happen" arms of its own. A shape the op never answers with is
//! [`StoreError::UnexpectedOutcome`], an internal failure.

use super::{
    AgentRecord, BoardingRecord, CertificateRecord, DataSourceConfigRecord, OperatorClientRecord,
    ProfileRecord, RegistrationRecord, RevocationRecord, Secret, SigningKeyRecord, StoreError,
    TenantRecord, WriteOutcome,
};

/// A value a committed write answers with, taken out of its [`WriteOutcome`].
pub trait FromOutcome: Sized {
    /// What the caller expected, for the error when the store answered something else.
    const EXPECTED: &'static str;

    /// The value, or `None` if `outcome` has another shape.
    fn take(outcome: WriteOutcome) -> Option<Self>;

    /// The value, or [`StoreError::UnexpectedOutcome`].
    fn from_outcome(outcome: WriteOutcome) -> Result<Self, StoreError> {
        let got = outcome.kind();
        Self::take(outcome).ok_or(StoreError::UnexpectedOutcome {
            expected: Self::EXPECTED,
            got,
        })
    }
}

impl WriteOutcome {
    /// The record this outcome carries, as `T`.
    pub fn into_record<T: FromOutcome>(self) -> Result<T, StoreError> {
        T::from_outcome(self)
    }

    /// The outcome's shape, without its contents (which may hold secrets).
    pub fn kind(&self) -> &'static str {
        match self {
            WriteOutcome::Done => "done",
            WriteOutcome::Tenant(_) => "tenant",
            WriteOutcome::Agent(_) => "agent",
            WriteOutcome::Boarding(..) => "boarding",
            WriteOutcome::Registration(_) => "registration",
            WriteOutcome::RotationReplayed { .. } => "replayed rotation",
            WriteOutcome::DataSourceConfig(_) => "data source configuration",
            WriteOutcome::OperatorClient(_) => "operator client",
            WriteOutcome::Profile(_) => "profile",
            WriteOutcome::SigningKey(_) => "signing key",
            WriteOutcome::Certificate(_) => "certificate",
            WriteOutcome::Revocation(_) => "revocation",
            WriteOutcome::Forgotten { .. } => "forgotten",
            WriteOutcome::Audit { .. } => "audit",
            WriteOutcome::AuditPruned { .. } => "audit pruned",
        }
    }
}

/// `WriteOutcome::Done`: the op changed what it had to and has nothing to show (a cut-over).
impl FromOutcome for () {
    const EXPECTED: &'static str = "done";
    fn take(outcome: WriteOutcome) -> Option<Self> {
        matches!(outcome, WriteOutcome::Done).then_some(())
    }
}

/// The agent a write changed, whether or not a boarding token was issued with it (creating an
/// agent issues its first one).
impl FromOutcome for AgentRecord {
    const EXPECTED: &'static str = "agent";
    fn take(outcome: WriteOutcome) -> Option<Self> {
        match outcome {
            WriteOutcome::Agent(agent) | WriteOutcome::Boarding(agent, _) => Some(agent),
            _ => None,
        }
    }
}

/// The agent and the boarding token just issued for it.
impl FromOutcome for (AgentRecord, BoardingRecord) {
    const EXPECTED: &'static str = "boarding";
    fn take(outcome: WriteOutcome) -> Option<Self> {
        match outcome {
            WriteOutcome::Boarding(agent, rec) => Some((agent, rec)),
            _ => None,
        }
    }
}

/// What a rotation answers: a new registration, or the answer of the rotation it repeats.
#[derive(Debug)]
pub enum Rotated {
    /// The rotation took effect.
    Fresh(RegistrationRecord),
    /// A repeated rotation with the previous RAT: the new RAT and the current shared secret,
    /// unsealed, as the first one answered.
    Replayed {
        registration: RegistrationRecord,
        rat: Secret,
        secret: Option<Secret>,
    },
}

impl FromOutcome for Rotated {
    const EXPECTED: &'static str = "registration";
    fn take(outcome: WriteOutcome) -> Option<Self> {
        match outcome {
            WriteOutcome::Registration(rec) => Some(Rotated::Fresh(rec)),
            WriteOutcome::RotationReplayed {
                registration,
                rat,
                secret,
            } => Some(Rotated::Replayed {
                registration,
                rat,
                secret,
            }),
            _ => None,
        }
    }
}

/// The sequence number an audit write was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Audited {
    pub seq: u64,
}

impl FromOutcome for Audited {
    const EXPECTED: &'static str = "audit";
    fn take(outcome: WriteOutcome) -> Option<Self> {
        match outcome {
            WriteOutcome::Audit { seq } => Some(Audited { seq }),
            _ => None,
        }
    }
}

/// One record type per outcome variant that carries exactly that record.
macro_rules! from_outcome {
    ($($record:ty => $variant:ident, $expected:literal;)*) => {$(
        impl FromOutcome for $record {
            const EXPECTED: &'static str = $expected;
            fn take(outcome: WriteOutcome) -> Option<Self> {
                match outcome {
                    WriteOutcome::$variant(rec) => Some(rec),
                    _ => None,
                }
            }
        }
    )*};
}

from_outcome! {
    TenantRecord => Tenant, "tenant";
    RegistrationRecord => Registration, "registration";
    DataSourceConfigRecord => DataSourceConfig, "data source configuration";
    OperatorClientRecord => OperatorClient, "operator client";
    ProfileRecord => Profile, "profile";
    SigningKeyRecord => SigningKey, "signing key";
    CertificateRecord => Certificate, "certificate";
    RevocationRecord => Revocation, "revocation";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_out_of_their_own_outcome_only() {
        let rec = RevocationRecord {
            kind: crate::store::RevocationKind::Token,
            id: "jti-1".into(),
            revoked_at: 7,
            forget_after: 9,
            by: "op".into(),
            reason: String::new(),
        };
        let got: RevocationRecord = WriteOutcome::Revocation(rec.clone()).into_record().unwrap();
        assert_eq!(got, rec);
        assert!(WriteOutcome::Done.into_record::<()>().is_ok());
        assert_eq!(
            WriteOutcome::Audit { seq: 3 }
                .into_record::<Audited>()
                .unwrap(),
            Audited { seq: 3 }
        );
        let e = WriteOutcome::Revocation(rec)
            .into_record::<CertificateRecord>()
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::UnexpectedOutcome {
                    expected: "certificate",
                    got: "revocation"
                }
            ),
            "{e}"
        );
        assert!(e.is_internal());
        let e = WriteOutcome::Done.into_record::<AgentRecord>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the store answered done where agent was expected"
        );
    }
}
