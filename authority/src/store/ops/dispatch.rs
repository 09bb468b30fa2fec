//! The one match from a [`WriteOp`] to the domain function that plans it.

use super::{
    HotChange, MasterKey, Plan, StoreError, Tables, WriteOp, WriteOutcome, agents, audit,
    certificates, clients, keys, prune, registration, revocations,
};

/// The one match from an op to the domain function that plans it (and names its audit entry).
pub(super) fn dispatch(
    t: &mut Tables<'_>,
    key: &MasterKey,
    op: WriteOp,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::PutTenant { record, now } => agents::put_tenant(p, record, now),
        WriteOp::CreateAgent(new) => agents::create(t, p, new),
        WriteOp::UpdateAgent {
            tenant,
            id,
            if_match,
            name,
            security_profile,
            by,
            now,
        } => agents::update(
            t,
            p,
            agents::AgentUpdate {
                tenant,
                id,
                if_match,
                name,
                security_profile,
                by,
                now,
            },
        ),
        WriteOp::DeleteAgent {
            tenant,
            id,
            if_match,
            by,
            now,
            forget_after,
        } => {
            let removal = agents::Removal {
                tenant,
                id,
                by,
                now,
                forget_after,
            };
            agents::delete(t, p, hot, removal, if_match)
        }
        WriteOp::IssueBoardingToken {
            tenant,
            agent_id,
            iat,
            by,
            now,
        } => agents::issue_boarding_token(t, p, &tenant, &agent_id, iat, &by, now),
        WriteOp::PutDataSourceConfig(c) => agents::put_datasource_config(t, p, c),
        WriteOp::Offboard {
            tenant,
            agent_id,
            by,
            now,
            forget_after,
        } => {
            let removal = agents::Removal {
                tenant,
                id: agent_id,
                by,
                now,
                forget_after,
            };
            agents::offboard(t, p, hot, removal)
        }
        WriteOp::Register(r) => registration::register(t, p, key, r, hot),
        WriteOp::RotateRegistration(r) => registration::rotate(t, p, key, r, hot),
        WriteOp::CutOver {
            client_id,
            generation,
            now,
        } => registration::cut_over(t, p, key, &client_id, generation, now, hot),
        WriteOp::SuspendAgent {
            tenant,
            id,
            suspend,
            by,
            now,
            forget_after,
        } => {
            let r = agents::Removal {
                tenant,
                id,
                by,
                now,
                forget_after,
            };
            agents::set_suspended(t, p, hot, r, suspend)
        }
        WriteOp::SuspendOperatorClient {
            id,
            suspend,
            by,
            now,
        } => clients::set_suspended(t, p, hot, id, suspend, &by, now),
        WriteOp::RotateOperatorClientSecret(r) => clients::rotate_secret(t, p, hot, r),
        WriteOp::CreateOperatorClient { record, by } => {
            clients::create_client(t, p, hot, record, &by)
        }
        WriteOp::DeleteOperatorClient { id, by, now } => {
            clients::delete_client(t, p, hot, id, &by, now)
        }
        WriteOp::PutProfile { record, by, now } => clients::put_profile(p, record, &by, now),
        WriteOp::DeleteProfile { name, by, now } => clients::delete_profile(t, p, &name, &by, now),
        WriteOp::AddSigningKey(k) => keys::add(t, p, key, hot, k),
        WriteOp::SetSigningKeyState {
            kid,
            state,
            takeover,
            by,
            now,
        } => {
            let change = keys::StateChange {
                kid,
                state,
                takeover,
                by,
                now,
            };
            keys::set_state(t, p, key, hot, change)
        }
        WriteOp::AddCertificate(c) => certificates::add(t, p, key, c),
        WriteOp::SetCertificateState {
            alias,
            state,
            by,
            now,
        } => certificates::set_state(t, p, &alias, state, &by, now),
        WriteOp::RenameCertificate {
            alias,
            new_alias,
            by,
            now,
        } => certificates::rename(t, p, key, alias, new_alias, &by, now),
        WriteOp::Revoke {
            kind,
            id,
            by,
            reason,
            now,
            forget_after,
        } => {
            let args = revocations::RevokeArgs {
                kind,
                id: &id,
                by: &by,
                reason: &reason,
                now,
                forget_after,
            };
            revocations::revoke_op(t, p, hot, args)
        }
        WriteOp::Forget { now } => revocations::forget(t, p, key, hot, now),
        WriteOp::PruneAudit(req) => prune::plan(t, p, &req),
        WriteOp::Audit {
            actor,
            event,
            subject,
            outcome,
            now,
        } => audit::record(t, p, &actor, &event, &subject, outcome, now),
    }
}
