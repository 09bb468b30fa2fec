//! Registration (RFC 7591, consuming the initial access token), rotation (RFC 7592) with its
//! grace window, the replay of a rotation whose answer was lost, and the cut-over that ends
//! the previous credentials.

use std::sync::Arc;

use super::{
    HotChange, MAX_JWKS, Plan, StoreError, StrTable, Tables, WriteOutcome, agent_of, get, not_found,
};
use crate::store::hot::{ClientAuth, PreviousCredentials};
use crate::store::records::*;
use crate::store::seal::{MasterKey, SealContext, Secret, SecretHash};

/// A registration request, already authenticated by the IAT's signature upstream.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The IAT's `jti`; consumed by this registration.
    pub iat_jti: String,
    pub tenant: String,
    /// = the IAT's `sub` = the agent id.
    pub client_id: String,
    pub auth_method: AuthMethod,
    pub secret: Option<Secret>,
    pub jwks: Vec<String>,
    pub secret_expires_at: u64,
    /// The new registration access token (only its hash is stored).
    pub rat: Secret,
    pub now: u64,
}

/// A rotation request (RFC 7592 PUT).
#[derive(Debug, Clone)]
pub struct Rotation {
    pub client_id: String,
    /// The RAT the client presented; must be the current one.
    pub presented_rat: Secret,
    pub new_rat: Secret,
    /// New shared secret (`None` keeps the current one).
    pub new_secret: Option<Secret>,
    /// New key set (`None` keeps the current one).
    pub new_jwks: Option<Vec<String>>,
    pub secret_expires_at: u64,
    /// Until when the replaced credentials stay usable (see [`RotationRecord`]); at or
    /// before `now`, the rotation keeps no grace and the old RAT dies at once.
    pub grace_until: u64,
    pub now: u64,
}

fn check_credentials(
    profile: SecurityProfile,
    method: AuthMethod,
    secret: Option<&Secret>,
    jwks: &[String],
) -> Result<(), StoreError> {
    let ok = match (profile, method) {
        (SecurityProfile::SharedSecret, AuthMethod::ClientSecretJwt) => secret.is_some(),
        (SecurityProfile::Rsa3072, AuthMethod::PrivateKeyJwt) => !jwks.is_empty(),
        (_, AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth) => true,
        _ => false,
    };
    if !ok {
        return Err(StoreError::Invalid(format!(
            "{} credentials do not fit security profile {}",
            method.as_str(),
            profile.as_str()
        )));
    }
    check_jwks(jwks)
}

fn check_jwks(jwks: &[String]) -> Result<(), StoreError> {
    if jwks.len() > MAX_JWKS {
        return Err(StoreError::Invalid(format!(
            "at most {MAX_JWKS} keys per registration"
        )));
    }
    Ok(())
}

pub(super) fn register(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    r: Registration,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    p.audit(&r.client_id, "agent.register", &r.client_id, r.now);
    let mut iat: BoardingRecord =
        get(&t.boarding, &r.iat_jti)?.ok_or(StoreError::InvalidIat("unknown or superseded"))?;
    if iat.used_at.is_some() {
        return Err(StoreError::InvalidIat("already used"));
    }
    if iat.expires_at <= r.now {
        return Err(StoreError::InvalidIat("expired"));
    }
    if iat.agent_id != r.client_id || iat.tenant != r.tenant {
        return Err(StoreError::InvalidIat("issued for another agent"));
    }
    let mut agent = agent_of(t, &r.tenant, &r.client_id)
        .map_err(|_| StoreError::InvalidIat("its agent no longer exists"))?;
    if agent.state != BoardingState::Onboarding || agent.current_iat.as_deref() != Some(&r.iat_jti)
    {
        return Err(StoreError::InvalidIat("superseded"));
    }
    refuse_suspended(&agent)?;
    check_credentials(
        agent.security_profile,
        r.auth_method,
        r.secret.as_ref(),
        &r.jwks,
    )?;
    let ctx = SealContext {
        table: "registrations",
        key: &r.client_id,
    };
    let sealed = match &r.secret {
        Some(s) => Some(key.seal(ctx, s.expose())?),
        None => None,
    };
    let rec = RegistrationRecord {
        client_id: r.client_id.clone(),
        tenant: r.tenant.clone(),
        auth_method: r.auth_method,
        sealed_secret: sealed,
        jwks: r.jwks,
        secret_expires_at: r.secret_expires_at,
        rat_hash: SecretHash::blake3(r.rat.expose())?,
        generation: 1,
        created_at: r.now,
        updated_at: r.now,
    };
    iat.used_at = Some(r.now);
    p.put(StrTable::Boarding, &r.iat_jti, &iat)?;
    p.put(StrTable::Registrations, &r.client_id, &rec)?;
    p.del(StrTable::Rotations, &r.client_id);
    agent.state = BoardingState::Onboarded;
    agent.current_iat = None;
    agent.etag += 1;
    agent.updated_at = r.now;
    p.put(StrTable::Agents, &r.client_id, &agent)?;
    hot.push(HotChange::Client(
        r.client_id.clone(),
        Some(Arc::new(hot_client(&rec, r.secret, None))),
    ));
    Ok(WriteOutcome::Registration(rec))
}

/// A suspended agent keeps its registration but may not register or rotate it.
fn refuse_suspended(agent: &AgentRecord) -> Result<(), StoreError> {
    match agent.suspended_at {
        Some(_) => Err(StoreError::InvalidState(format!(
            "agent {:?} is suspended by its operator; it may register or rotate again once resumed",
            agent.id
        ))),
        None => Ok(()),
    }
}

fn suspended_check(t: &Tables<'_>, id: &str) -> Result<(), StoreError> {
    match get::<AgentRecord>(&t.agents, id)? {
        Some(agent) => refuse_suspended(&agent),
        None => Ok(()),
    }
}

pub(super) fn rotate(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    r: Rotation,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    p.audit(&r.client_id, "agent.rotate", &r.client_id, r.now);
    let mut rec: RegistrationRecord = get(&t.registrations, &r.client_id)?
        .ok_or_else(|| not_found("registration", &r.client_id))?;
    let grace = live_rotation(t, &rec, r.now)?;
    let ctx = SealContext {
        table: "registrations",
        key: &r.client_id,
    };
    if !rec.rat_hash.verify(r.presented_rat.expose()) {
        return match grace {
            Some(g) if g.previous_rat_hash.verify(r.presented_rat.expose()) => {
                suspended_check(t, &r.client_id)?;
                let outcome = replay(p, key, rec, g, r, hot)?;
                // Answered like the first time, but audited as what it is.
                p.audit_event("agent.rotate.replay");
                Ok(outcome)
            }
            _ => Err(StoreError::StaleRat),
        };
    }
    // Checked only once the RAT proved the caller is the agent.
    suspended_check(t, &r.client_id)?;
    let current_secret = match &rec.sealed_secret {
        Some(sealed) => Some(key.unseal(ctx, sealed)?),
        None => None,
    };
    let secret = r.new_secret.clone().or_else(|| current_secret.clone());
    if let Some(jwks) = &r.new_jwks {
        check_jwks(jwks)?;
        if rec.auth_method == AuthMethod::PrivateKeyJwt && jwks.is_empty() {
            return Err(StoreError::Invalid(
                "a private_key_jwt client needs at least one key".into(),
            ));
        }
    }
    if rec.auth_method == AuthMethod::ClientSecretJwt && secret.is_none() {
        return Err(StoreError::Invalid(
            "a client_secret_jwt client needs a secret".into(),
        ));
    }
    if grace.is_some() {
        // The new RAT of the last rotation is in use: that rotation's old credentials end.
        p.audits.push(cut_over_audit(&r.client_id, r.now));
    }
    let previous = Rotated {
        rat_hash: rec.rat_hash.clone(),
        jwks: rec.jwks.clone(),
        secret: current_secret,
        expires_at: rec.secret_expires_at,
    };
    if let Some(s) = &r.new_secret {
        rec.sealed_secret = Some(key.seal(ctx, s.expose())?);
    }
    if let Some(jwks) = r.new_jwks {
        rec.jwks = jwks;
    }
    rec.rat_hash = SecretHash::blake3(r.new_rat.expose())?;
    rec.generation += 1;
    rec.secret_expires_at = r.secret_expires_at;
    rec.updated_at = r.now;
    p.put(StrTable::Registrations, &r.client_id, &rec)?;
    let previous = if r.grace_until > r.now {
        let secrets = RotationSecrets {
            new_rat: r.new_rat,
            previous_secret: previous.secret,
        };
        let row = RotationRecord {
            client_id: r.client_id.clone(),
            generation: rec.generation,
            previous_rat_hash: previous.rat_hash,
            previous_jwks: previous.jwks,
            previous_secret_expires_at: previous.expires_at,
            sealed: secrets.seal(key, &r.client_id)?,
            rotated_at: r.now,
            grace_until: r.grace_until,
        };
        p.put(StrTable::Rotations, &r.client_id, &row)?;
        Some(previous_credentials(&row, secrets))
    } else {
        p.del(StrTable::Rotations, &r.client_id);
        None
    };
    hot.push(HotChange::Client(
        r.client_id.clone(),
        Some(Arc::new(hot_client(&rec, secret, previous))),
    ));
    Ok(WriteOutcome::Registration(rec))
}

/// What a rotation replaces, taken before the record changes.
struct Rotated {
    rat_hash: SecretHash,
    jwks: Vec<String>,
    secret: Option<Secret>,
    expires_at: u64,
}

/// The rotation row of `rec` if its grace window is open at `now` (a row of another
/// generation is stale and ignored).
fn live_rotation(
    t: &Tables<'_>,
    rec: &RegistrationRecord,
    now: u64,
) -> Result<Option<RotationRecord>, StoreError> {
    Ok(get::<RotationRecord>(&t.rotations, &rec.client_id)?
        .filter(|g| g.generation == rec.generation && now < g.grace_until))
}

/// A repeated rotation with the previous RAT: the same new credentials again. An RSA agent
/// may present other keys than the lost request did (MCL makes a new key per attempt); the
/// keys of its last attempt are the ones it holds, so they replace the pending ones.
fn replay(
    p: &mut Plan,
    key: &MasterKey,
    mut rec: RegistrationRecord,
    grace: RotationRecord,
    r: Rotation,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    let secrets = RotationSecrets::unseal(key, &r.client_id, &grace.sealed)?;
    let secret = match &rec.sealed_secret {
        Some(sealed) => Some(key.unseal(
            SealContext {
                table: "registrations",
                key: &r.client_id,
            },
            sealed,
        )?),
        None => None,
    };
    if let Some(jwks) = r.new_jwks
        && jwks != rec.jwks
    {
        check_jwks(&jwks)?;
        if jwks.is_empty() {
            return Err(StoreError::Invalid(
                "a private_key_jwt client needs at least one key".into(),
            ));
        }
        rec.jwks = jwks;
        rec.updated_at = r.now;
        p.put(StrTable::Registrations, &r.client_id, &rec)?;
        let previous = previous_credentials(&grace, secrets.clone());
        hot.push(HotChange::Client(
            r.client_id.clone(),
            Some(Arc::new(hot_client(&rec, secret.clone(), Some(previous)))),
        ));
    }
    Ok(WriteOutcome::RotationReplayed {
        registration: rec,
        rat: secrets.new_rat,
        secret,
    })
}

pub(super) fn cut_over(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    client_id: &str,
    generation: u64,
    now: u64,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    let Some(rec) = get::<RegistrationRecord>(&t.registrations, client_id)? else {
        return Ok(WriteOutcome::Done);
    };
    let row = get::<RotationRecord>(&t.rotations, client_id)?;
    if rec.generation != generation || row.as_ref().map(|g| g.generation) != Some(generation) {
        // Rotated again, offboarded, or cut over already: nothing left to end.
        return Ok(WriteOutcome::Done);
    }
    p.del(StrTable::Rotations, client_id);
    p.audits.push(cut_over_audit(client_id, now));
    hot.push(HotChange::Client(
        client_id.to_owned(),
        Some(Arc::new(unsealed_client(key, &rec, None)?)),
    ));
    Ok(WriteOutcome::Done)
}

fn cut_over_audit(client_id: &str, now: u64) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: now,
        actor: client_id.to_owned(),
        event: "agent.rotate.cutover".into(),
        subject: client_id.to_owned(),
        outcome: AuditOutcome::Success,
    }
}

/// The two secrets a [`RotationRecord`] seals as one blob: the new RAT the rotation answered
/// with and the shared secret it replaced. Plaintext: `rat length (u16 BE) | rat | secret`.
#[derive(Clone)]
struct RotationSecrets {
    new_rat: Secret,
    previous_secret: Option<Secret>,
}

impl RotationSecrets {
    fn seal(&self, key: &MasterKey, client_id: &str) -> Result<Vec<u8>, StoreError> {
        let rat = self.new_rat.expose();
        let len = u16::try_from(rat.len())
            .map_err(|_| StoreError::Invalid("registration access token too long".into()))?;
        let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(2 + rat.len() + 64));
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(rat);
        if let Some(s) = &self.previous_secret {
            plain.extend_from_slice(s.expose());
        }
        key.seal(rotation_ctx(client_id), &plain)
    }

    fn unseal(key: &MasterKey, client_id: &str, sealed: &[u8]) -> Result<Self, StoreError> {
        let plain = key.unseal(rotation_ctx(client_id), sealed)?;
        let bytes = plain.expose();
        let corrupt = || StoreError::Corrupt {
            table: "rotations",
            reason: "sealed rotation secrets are malformed".into(),
        };
        let (len, rest) = bytes.split_first_chunk::<2>().ok_or_else(corrupt)?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            return Err(corrupt());
        }
        let (rat, secret) = rest.split_at(len);
        Ok(RotationSecrets {
            new_rat: Secret::new(rat),
            previous_secret: (!secret.is_empty()).then(|| Secret::new(secret)),
        })
    }
}

fn rotation_ctx(client_id: &str) -> SealContext<'_> {
    SealContext {
        table: "rotations",
        key: client_id,
    }
}

fn previous_credentials(row: &RotationRecord, secrets: RotationSecrets) -> PreviousCredentials {
    PreviousCredentials {
        secret: secrets.previous_secret,
        jwks: row.previous_jwks.clone(),
        until: row.grace_until,
        secret_expires_at: row.previous_secret_expires_at,
        hmac_keys: Default::default(),
    }
}

/// The hot entry of a registration: its secret unsealed, and the previous credentials of
/// `rotation` if that row belongs to this generation.
pub(crate) fn unsealed_client(
    key: &MasterKey,
    rec: &RegistrationRecord,
    rotation: Option<&RotationRecord>,
) -> Result<ClientAuth, StoreError> {
    let secret = match &rec.sealed_secret {
        Some(s) => Some(key.unseal(
            SealContext {
                table: "registrations",
                key: &rec.client_id,
            },
            s,
        )?),
        None => None,
    };
    let previous = match rotation.filter(|g| g.generation == rec.generation) {
        Some(row) => Some(previous_credentials(
            row,
            RotationSecrets::unseal(key, &rec.client_id, &row.sealed)?,
        )),
        None => None,
    };
    Ok(hot_client(rec, secret, previous))
}

fn hot_client(
    rec: &RegistrationRecord,
    secret: Option<Secret>,
    previous: Option<PreviousCredentials>,
) -> ClientAuth {
    ClientAuth {
        client_id: rec.client_id.clone(),
        tenant: rec.tenant.clone(),
        auth_method: rec.auth_method,
        secret,
        jwks: rec.jwks.clone(),
        secret_expires_at: rec.secret_expires_at,
        generation: rec.generation,
        hmac_keys: Default::default(),
        previous,
        cut_over: Default::default(),
    }
}
