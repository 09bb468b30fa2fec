//! Latchkey's token pipeline beside the raw signature primitives and the `jsonwebtoken` crate.
//!
//! Every group benches one operation for one algorithm; the raw primitive runs on exactly the
//! bytes the pipeline signs or verifies (the token's signing input), so each ratio in
//! `bench/results/core.md` comes from a single run. Results and the command: see that file.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{hmac, rand::SystemRandom, signature as lc};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use jsonwebtoken as jwt;
use latchkey_core::jti::JtiGenerator;
use latchkey_core::replay::{ReplayCache, ReplayConfig};
use latchkey_core::revocation::{RevocationSet, RevocationUpdate};
use latchkey_core::{
    Algorithm, Audience, Claims, Jwk, KeyRing, SigningKey, TokenType, UnverifiedToken, Validation,
    Verifier, VerifyingKey, dangerous, jws,
};
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;

const ISSUER: &str = "https://latchkey.test";
const AUDIENCE: &str = "https://latchkey.test/api";
const HMAC_SECRET: [u8; 32] = [0x5a; 32];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything the groups share: one key ring with an active key per algorithm, the same keys
/// loaded into each raw backend and into `jsonwebtoken`.
struct Fixture {
    now: u64,
    ring: Arc<KeyRing>,
    verifier: Verifier,
    claims: Claims,
    jti: JtiGenerator,
    ed_pkcs8: Vec<u8>,
    ed_public: Vec<u8>,
    es_pkcs8: Vec<u8>,
    es_point: Vec<u8>,
    rsa_pkcs1: Vec<u8>,
    rsa_n: Vec<u8>,
    rsa_e: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let now = now();
        let ring = Arc::new(KeyRing::new());
        let ed = SigningKey::generate(Algorithm::EdDSA).expect("keygen");
        let ed_pkcs8 = ed.to_pkcs8_der().expect("export").to_vec();
        let ed_public = jwk_bytes(&ed.verifying_key(), |j| &j.x);
        let es = SigningKey::generate(Algorithm::ES256).expect("keygen");
        let es_pkcs8 = es.to_pkcs8_der().expect("export").to_vec();
        let es_point = {
            let jwk = Jwk::from_public_key(&es.verifying_key()).expect("public");
            let mut p = vec![4];
            for c in [&jwk.x, &jwk.y] {
                p.extend(
                    URL_SAFE_NO_PAD
                        .decode(c.as_deref().unwrap_or(""))
                        .expect("b64"),
                );
            }
            p
        };
        let rs256 = SigningKey::generate(Algorithm::RS256).expect("keygen");
        let rsa_pkcs8 = rs256.to_pkcs8_der().expect("export");
        let rs384 = SigningKey::from_pkcs8_der(Algorithm::RS384, &rsa_pkcs8)
            .expect("import")
            .with_kid("rs384");
        let rsa_private = rsa::RsaPrivateKey::from_pkcs8_der(&rsa_pkcs8).expect("rsa 0.9 import");
        let rsa_pkcs1 = {
            use rsa::pkcs1::EncodeRsaPrivateKey as _;
            rsa_private
                .to_pkcs1_der()
                .expect("pkcs1")
                .as_bytes()
                .to_vec()
        };
        let rsa_n = rsa_private.n().to_bytes_be();
        let rsa_e = rsa_private.e().to_bytes_be();
        let hs = SigningKey::hmac(Algorithm::HS256, &HMAC_SECRET)
            .expect("hmac key")
            .with_kid("hs");
        for key in [ed, es, rs256.with_kid("rs256"), rs384, hs] {
            ring.rotate(key).expect("rotate");
        }
        let mut validation = Validation::new(TokenType::AccessToken);
        validation.issuers = vec![ISSUER.into()];
        validation.audiences = vec![AUDIENCE.into()];
        validation.max_lifetime = Some(3600);
        let verifier = Verifier::new(ring.clone(), Arc::new(RevocationSet::new()), validation);
        let claims = Claims {
            iss: Some(ISSUER.into()),
            sub: Some("agent-2c0f6a7e-93b1-4d39-9f0a-1c5e0b2f3d44".into()),
            aud: Some(Audience::One(AUDIENCE.into())),
            exp: Some(now + 1800),
            iat: Some(now),
            jti: Some("2c0f6a7e93b14d399f0a1c5e0b2f3d44xyz".into()),
            extra: [(
                "scope".to_owned(),
                serde_json::Value::from("mdsp:core:agent"),
            )]
            .into_iter()
            .collect(),
            ..Claims::default()
        };
        Fixture {
            now,
            ring,
            verifier,
            claims,
            jti: JtiGenerator::random().expect("os rng"),
            ed_pkcs8,
            ed_public,
            es_pkcs8,
            es_point,
            rsa_pkcs1,
            rsa_n,
            rsa_e,
        }
    }

    fn mint(&self, alg: Algorithm) -> String {
        self.ring
            .mint(alg, TokenType::AccessToken, &self.claims)
            .expect("mint")
    }

    /// `n` EdDSA access tokens with distinct `jti`s, as a real batch would be.
    fn distinct_tokens(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let mut claims = self.claims.clone();
                claims.jti = Some(format!("batch-{i}"));
                self.ring
                    .mint(Algorithm::EdDSA, TokenType::AccessToken, &claims)
                    .expect("mint")
            })
            .collect()
    }

    /// The same claims as `self.claims`, for `jsonwebtoken`.
    fn jwt_claims(&self) -> serde_json::Value {
        serde_json::json!({
            "iss": ISSUER,
            "sub": self.claims.sub,
            "aud": AUDIENCE,
            "exp": self.claims.exp,
            "iat": self.claims.iat,
            "jti": self.claims.jti,
            "scope": "mdsp:core:agent",
        })
    }

    fn jwt_header(&self, alg: jwt::Algorithm) -> jwt::Header {
        let mut h = jwt::Header::new(alg);
        h.kid = Some("kid-of-similar-length-0123456789abcdefghijk".into());
        h.typ = Some("at+jwt".into());
        h
    }

    fn jwt_validation(&self, alg: jwt::Algorithm) -> jwt::Validation {
        let mut v = jwt::Validation::new(alg);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v
    }
}

fn jwk_bytes(key: &VerifyingKey, member: impl Fn(&Jwk) -> &Option<String>) -> Vec<u8> {
    let jwk = Jwk::from_public_key(key).expect("public key");
    URL_SAFE_NO_PAD
        .decode(member(&jwk).as_deref().unwrap_or(""))
        .expect("b64")
}

/// `(signing input, signature)` of a compact token.
fn split(token: &str) -> (&[u8], Vec<u8>) {
    let (input, sig) = token.rsplit_once('.').expect("compact JWS");
    (input.as_bytes(), URL_SAFE_NO_PAD.decode(sig).expect("b64"))
}

fn eddsa(c: &mut Criterion, f: &Fixture) {
    let token = f.mint(Algorithm::EdDSA);
    let (input, sig) = split(&token);
    let lc_key = lc::Ed25519KeyPair::from_pkcs8(&f.ed_pkcs8).expect("aws-lc import");
    let dalek_key = ed25519_dalek::SigningKey::from_pkcs8_der(&f.ed_pkcs8).expect("dalek import");
    let dalek_public = dalek_key.verifying_key();
    let jwt_enc = jwt::EncodingKey::from_ed_der(&f.ed_pkcs8);
    let jwt_dec = jwt::DecodingKey::from_ed_der(&f.ed_public);
    let jwt_header = f.jwt_header(jwt::Algorithm::EdDSA);
    let jwt_claims = f.jwt_claims();

    let mut g = c.benchmark_group("eddsa_mint");
    g.bench_function("raw_sign/aws-lc-rs", |b| {
        b.iter(|| lc_key.sign(black_box(input)))
    });
    g.bench_function("raw_sign/ed25519-dalek", |b| {
        b.iter(|| dalek_key.sign(black_box(input)))
    });
    g.bench_function("latchkey/mint", |b| {
        let mut claims = f.claims.clone();
        b.iter(|| {
            claims.jti = Some(f.jti.next_compact());
            f.ring
                .mint(Algorithm::EdDSA, TokenType::AccessToken, black_box(&claims))
                .expect("mint")
        })
    });
    g.bench_function("jsonwebtoken/encode", |b| {
        b.iter(|| jwt::encode(&jwt_header, black_box(&jwt_claims), &jwt_enc).expect("encode"))
    });
    g.finish();

    let sig64: [u8; 64] = sig.as_slice().try_into().expect("64 bytes");
    let dalek_sig = ed25519_dalek::Signature::from_bytes(&sig64);
    let lc_public = lc::ParsedPublicKey::new(&lc::ED25519, &f.ed_public).expect("aws-lc public");
    let jwt_token = jwt::encode(&jwt_header, &jwt_claims, &jwt_enc).expect("jsonwebtoken token");
    let jwt_validation = f.jwt_validation(jwt::Algorithm::EdDSA);
    let mut g = c.benchmark_group("eddsa_verify");
    g.bench_function("raw_verify_strict/ed25519-dalek", |b| {
        b.iter(|| {
            dalek_public
                .verify_strict(black_box(input), &dalek_sig)
                .expect("valid")
        })
    });
    g.bench_function("raw_verify/aws-lc-rs", |b| {
        b.iter(|| lc_public.verify_sig(black_box(input), &sig).expect("valid"))
    });
    g.bench_function("latchkey/verify", |b| {
        b.iter(|| f.verifier.verify(black_box(&token), f.now).expect("valid"))
    });
    g.bench_function("jsonwebtoken/decode", |b| {
        b.iter(|| {
            jwt::decode::<serde_json::Value>(black_box(&jwt_token), &jwt_dec, &jwt_validation)
                .expect("valid")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("eddsa_batch_verify");
    for n in [64usize, 256] {
        let tokens = f.distinct_tokens(n);
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let parts: Vec<(&[u8], Vec<u8>)> = refs.iter().map(|t| split(t)).collect();
        let messages: Vec<&[u8]> = parts.iter().map(|(m, _)| *m).collect();
        let signatures: Vec<ed25519_dalek::Signature> = parts
            .iter()
            .map(|(_, s)| ed25519_dalek::Signature::from_slice(s).expect("64 bytes"))
            .collect();
        let keys = vec![dalek_public; n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("raw_batch/ed25519-dalek", n),
            &n,
            |b, _| {
                b.iter(|| {
                    ed25519_dalek::verify_batch(black_box(&messages), &signatures, &keys)
                        .expect("valid")
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("latchkey/verify_batch", n), &n, |b, _| {
            b.iter(|| {
                let out = f.verifier.verify_batch(black_box(&refs), f.now);
                assert!(out.iter().all(Result::is_ok));
                out
            })
        });
    }
    g.finish();
}

fn hmac_group(c: &mut Criterion, f: &Fixture) {
    // A client assertion as an agent's SDK would send it (RFC 7523, HS256, `typ: JWT`).
    let client = "tenant-agent-0001";
    let assertion_claims = serde_json::json!({
        "iss": client, "sub": client, "aud": AUDIENCE,
        "exp": f.now + 300, "iat": f.now, "jti": "5b0b4e61-2b6f-4a7e-9f3c-0d8d2f1e6a77",
    });
    let jwt_enc = jwt::EncodingKey::from_secret(&HMAC_SECRET);
    let jwt_dec = jwt::DecodingKey::from_secret(&HMAC_SECRET);
    let mut header = jwt::Header::new(jwt::Algorithm::HS256);
    header.typ = Some("JWT".into());
    let assertion = jwt::encode(&header, &assertion_claims, &jwt_enc).expect("encode");
    let (input, sig) = split(&assertion);
    let raw_key = hmac::Key::new(hmac::HMAC_SHA256, &HMAC_SECRET);
    let key = VerifyingKey::hmac(Algorithm::HS256, &HMAC_SECRET).expect("hmac key");
    let mut validation = Validation::new(TokenType::ClientAssertion);
    validation.audiences = vec![AUDIENCE.into()];
    validation.max_lifetime = Some(3600);
    let mut jwt_validation = jwt::Validation::new(jwt::Algorithm::HS256);
    jwt_validation.set_audience(&[AUDIENCE]);
    jwt_validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

    let mut g = c.benchmark_group("hs256_assertion_verify");
    g.bench_function("raw_hmac_verify/aws-lc-rs", |b| {
        b.iter(|| hmac::verify(&raw_key, black_box(input), &sig).expect("valid"))
    });
    g.bench_function("latchkey/verify", |b| {
        b.iter(|| jws::verify(black_box(&assertion), &key, &validation, f.now).expect("valid"))
    });
    // What the token endpoint does per assertion: verify, then the replay check. Time moves
    // one second per 1000 assertions so entries expire and the cache stays at steady state.
    let cache = ReplayCache::with_random_key(ReplayConfig {
        capacity: 1 << 16,
        max_lifetime: 3600,
        leeway: 0,
        floor: None,
        ..ReplayConfig::default()
    })
    .expect("os rng");
    // Criterion calls the closure once per sample: the clock must live outside it, or time
    // would restart while earlier entries are still live.
    let clock = std::sync::atomic::AtomicU64::new(0);
    g.bench_function("latchkey/verify+replay_check", |b| {
        b.iter(|| {
            let token = jws::verify(black_box(&assertion), &key, &validation, f.now).expect("ok");
            let n = clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let now = f.now + n / 1000;
            let claims = token.claims();
            cache
                .check_and_insert(
                    claims.iss.as_deref().unwrap_or(""),
                    &f.jti.next_compact(),
                    None,
                    now + 10,
                    now,
                )
                .expect("fresh jti")
        })
    });
    // The same with a per-issuer share (one issuer, far below its share): the share's cost
    // beside the plain check.
    let shared = ReplayCache::with_random_key(ReplayConfig {
        capacity: 1 << 16,
        max_lifetime: 3600,
        leeway: 0,
        floor: None,
        max_per_issuer: 1 << 15,
        share_window: 20,
    })
    .expect("os rng");
    let clock = std::sync::atomic::AtomicU64::new(0);
    g.bench_function("latchkey/verify+replay_check+issuer_share", |b| {
        b.iter(|| {
            let token = jws::verify(black_box(&assertion), &key, &validation, f.now).expect("ok");
            let n = clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let now = f.now + n / 1000;
            let claims = token.claims();
            shared
                .check_and_insert(
                    claims.iss.as_deref().unwrap_or(""),
                    &f.jti.next_compact(),
                    None,
                    now + 10,
                    now,
                )
                .expect("fresh jti")
        })
    });
    g.bench_function("jsonwebtoken/decode", |b| {
        b.iter(|| {
            jwt::decode::<serde_json::Value>(black_box(&assertion), &jwt_dec, &jwt_validation)
                .expect("valid")
        })
    });
    g.finish();

    let jwt_header = f.jwt_header(jwt::Algorithm::HS256);
    let jwt_claims = f.jwt_claims();
    let token = f.mint(Algorithm::HS256);
    let (input, _) = split(&token);
    let mut g = c.benchmark_group("hs256_mint");
    g.bench_function("raw_hmac_sign/aws-lc-rs", |b| {
        b.iter(|| hmac::sign(&raw_key, black_box(input)))
    });
    g.bench_function("latchkey/mint", |b| {
        b.iter(|| {
            f.ring
                .mint(
                    Algorithm::HS256,
                    TokenType::AccessToken,
                    black_box(&f.claims),
                )
                .expect("mint")
        })
    });
    g.bench_function("jsonwebtoken/encode", |b| {
        b.iter(|| jwt::encode(&jwt_header, black_box(&jwt_claims), &jwt_enc).expect("encode"))
    });
    g.finish();
}

fn rsa_group(c: &mut Criterion, f: &Fixture) {
    let rsa_public = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&f.rsa_n),
        rsa::BigUint::from_bytes_be(&f.rsa_e),
    )
    .expect("rsa 0.9 public key");
    let lc_components = lc::RsaPublicKeyComponents {
        n: f.rsa_n.as_slice(),
        e: f.rsa_e.as_slice(),
    };
    for (alg, lc_params, name) in [
        (
            Algorithm::RS256,
            &lc::RSA_PKCS1_2048_8192_SHA256,
            "rs256_3072_verify",
        ),
        (
            Algorithm::RS384,
            &lc::RSA_PKCS1_2048_8192_SHA384,
            "rs384_3072_verify",
        ),
    ] {
        let token = f.mint(alg);
        let (input, sig) = split(&token);
        let lc_key = lc_components
            .to_parsed_public_key(lc_params)
            .expect("aws-lc public");
        let mut g = c.benchmark_group(name);
        g.bench_function("raw_verify/aws-lc-rs", |b| {
            b.iter(|| lc_key.verify_sig(black_box(input), &sig).expect("valid"))
        });
        g.bench_function("raw_verify/rsa-0.9", |b| {
            b.iter(|| {
                use rsa::sha2::Digest as _;
                let (scheme, hashed) = if alg == Algorithm::RS256 {
                    (
                        rsa::Pkcs1v15Sign::new::<rsa::sha2::Sha256>(),
                        rsa::sha2::Sha256::digest(black_box(input)).to_vec(),
                    )
                } else {
                    (
                        rsa::Pkcs1v15Sign::new::<rsa::sha2::Sha384>(),
                        rsa::sha2::Sha384::digest(black_box(input)).to_vec(),
                    )
                };
                rsa_public.verify(scheme, &hashed, &sig).expect("valid")
            })
        });
        g.bench_function("latchkey/verify", |b| {
            b.iter(|| f.verifier.verify(black_box(&token), f.now).expect("valid"))
        });
        if alg == Algorithm::RS256 {
            let jwt_enc = jwt::EncodingKey::from_rsa_der(&f.rsa_pkcs1);
            let jwt_dec = jwt::DecodingKey::from_rsa_raw_components(&f.rsa_n, &f.rsa_e);
            let jwt_token = jwt::encode(
                &f.jwt_header(jwt::Algorithm::RS256),
                &f.jwt_claims(),
                &jwt_enc,
            )
            .expect("encode");
            let v = f.jwt_validation(jwt::Algorithm::RS256);
            g.bench_function("jsonwebtoken/decode", |b| {
                b.iter(|| {
                    jwt::decode::<serde_json::Value>(black_box(&jwt_token), &jwt_dec, &v)
                        .expect("valid")
                })
            });
        }
        g.finish();
    }

    let jwt_enc = jwt::EncodingKey::from_rsa_der(&f.rsa_pkcs1);
    let jwt_header = f.jwt_header(jwt::Algorithm::RS256);
    let jwt_claims = f.jwt_claims();
    let lc_key = lc::RsaKeyPair::from_der(&f.rsa_pkcs1).expect("aws-lc import");
    let rng = SystemRandom::new();
    let token = f.mint(Algorithm::RS256);
    let (input, _) = split(&token);
    let mut g = c.benchmark_group("rs256_3072_mint");
    g.bench_function("raw_sign/aws-lc-rs", |b| {
        let mut sig = vec![0; lc_key.public_modulus_len()];
        b.iter(|| {
            lc_key
                .sign(&lc::RSA_PKCS1_SHA256, &rng, black_box(input), &mut sig)
                .expect("sign")
        })
    });
    g.bench_function("latchkey/mint", |b| {
        b.iter(|| {
            f.ring
                .mint(
                    Algorithm::RS256,
                    TokenType::AccessToken,
                    black_box(&f.claims),
                )
                .expect("mint")
        })
    });
    g.bench_function("jsonwebtoken/encode", |b| {
        b.iter(|| jwt::encode(&jwt_header, black_box(&jwt_claims), &jwt_enc).expect("encode"))
    });
    g.finish();
}

fn es256_group(c: &mut Criterion, f: &Fixture) {
    let token = f.mint(Algorithm::ES256);
    let (input, sig) = split(&token);
    let lc_key = lc::EcdsaKeyPair::from_pkcs8(&lc::ECDSA_P256_SHA256_FIXED_SIGNING, &f.es_pkcs8)
        .expect("aws-lc import");
    let lc_public =
        lc::ParsedPublicKey::new(&lc::ECDSA_P256_SHA256_FIXED, &f.es_point).expect("public");
    let rng = SystemRandom::new();
    let jwt_enc = jwt::EncodingKey::from_ec_der(&f.es_pkcs8);
    let jwt_dec = jwt::DecodingKey::from_ec_der(&f.es_point);
    let jwt_header = f.jwt_header(jwt::Algorithm::ES256);
    let jwt_claims = f.jwt_claims();

    let mut g = c.benchmark_group("es256_mint");
    g.bench_function("raw_sign/aws-lc-rs", |b| {
        b.iter(|| lc_key.sign(&rng, black_box(input)).expect("sign"))
    });
    g.bench_function("latchkey/mint", |b| {
        b.iter(|| {
            f.ring
                .mint(
                    Algorithm::ES256,
                    TokenType::AccessToken,
                    black_box(&f.claims),
                )
                .expect("mint")
        })
    });
    g.bench_function("jsonwebtoken/encode", |b| {
        b.iter(|| jwt::encode(&jwt_header, black_box(&jwt_claims), &jwt_enc).expect("encode"))
    });
    g.finish();

    let jwt_token = jwt::encode(&jwt_header, &jwt_claims, &jwt_enc).expect("encode");
    let v = f.jwt_validation(jwt::Algorithm::ES256);
    let mut g = c.benchmark_group("es256_verify");
    g.bench_function("raw_verify/aws-lc-rs", |b| {
        b.iter(|| lc_public.verify_sig(black_box(input), &sig).expect("valid"))
    });
    g.bench_function("latchkey/verify", |b| {
        b.iter(|| f.verifier.verify(black_box(&token), f.now).expect("valid"))
    });
    g.bench_function("jsonwebtoken/decode", |b| {
        b.iter(|| {
            jwt::decode::<serde_json::Value>(black_box(&jwt_token), &jwt_dec, &v).expect("valid")
        })
    });
    g.finish();
}

/// Tokens per second with 1 and 2 threads sharing one key ring (EdDSA). Each thread does an
/// equal share of the iterations; the time reported is wall time, so per-"iteration" time is
/// wall time / total tokens and the throughput is the aggregate rate. The raw primitives run
/// the same way, so the rows show what two threads of this machine can do at all.
fn scaling(c: &mut Criterion, f: &Fixture) {
    let token = f.mint(Algorithm::EdDSA);
    let (input, sig) = split(&token);
    let lc_key = lc::Ed25519KeyPair::from_pkcs8(&f.ed_pkcs8).expect("aws-lc import");
    let lc_public = lc::ParsedPublicKey::new(&lc::ED25519, &f.ed_public).expect("aws-lc public");
    let sig64: [u8; 64] = sig.as_slice().try_into().expect("64 bytes");
    let dalek_sig = ed25519_dalek::Signature::from_bytes(&sig64);
    let dalek_public = ed25519_dalek::SigningKey::from_pkcs8_der(&f.ed_pkcs8)
        .expect("dalek import")
        .verifying_key();
    let mut g = c.benchmark_group("scaling_eddsa");
    g.throughput(Throughput::Elements(1));
    for threads in [1u64, 2] {
        g.bench_with_input(BenchmarkId::new("mint", threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                parallel(iters, t, || {
                    f.ring
                        .mint(
                            Algorithm::EdDSA,
                            TokenType::AccessToken,
                            black_box(&f.claims),
                        )
                        .expect("mint");
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("verify", threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                parallel(iters, t, || {
                    f.verifier.verify(black_box(&token), f.now).expect("valid");
                })
            })
        });
        g.bench_with_input(
            BenchmarkId::new("raw_sign_aws-lc-rs", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    parallel(iters, t, || {
                        black_box(lc_key.sign(black_box(input)));
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("raw_verify_aws-lc-rs", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    parallel(iters, t, || {
                        lc_public.verify_sig(black_box(input), &sig).expect("valid");
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("raw_verify_strict_ed25519-dalek", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    parallel(iters, t, || {
                        dalek_public
                            .verify_strict(black_box(input), &dalek_sig)
                            .expect("valid");
                    })
                })
            },
        );
    }
    g.finish();
}

fn parallel(iters: u64, threads: u64, op: impl Fn() + Sync) -> Duration {
    let per_thread = iters.div_ceil(threads);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per_thread {
                    op();
                }
            });
        }
    });
    // Scale back to `iters` operations when `iters` does not divide evenly.
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_thread * threads) as f64)
}

/// The non-cryptographic parts of the pipeline, to see where time goes beside the signature.
fn parts(c: &mut Criterion, f: &Fixture) {
    let token = f.mint(Algorithm::EdDSA);
    let mut g = c.benchmark_group("pipeline_parts");
    g.bench_function("parse_compact_jws", |b| {
        b.iter(|| UnverifiedToken::parse(black_box(&token)).expect("parses"))
    });
    g.bench_function("parse+claims_json", |b| {
        b.iter(|| {
            let t = UnverifiedToken::parse(black_box(&token)).expect("parses");
            dangerous::insecure_claims(&t).expect("claims")
        })
    });
    let validation = f.verifier.validation().clone();
    g.bench_function("claims_validation", |b| {
        b.iter(|| {
            validation
                .validate(Some("at+jwt"), black_box(&f.claims), f.now)
                .expect("valid")
        })
    });
    g.bench_function("claims_serialize", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| black_box(&f.claims).write_json(&mut buf).expect("json"))
    });
    g.bench_function("jti_next_compact", |b| b.iter(|| f.jti.next_compact()));
    let revoked = RevocationSet::new();
    revoked.apply(
        &(0..1000)
            .map(|i| RevocationUpdate::Jti {
                jti: format!("revoked-{i}"),
                forget_after: u64::MAX,
            })
            .collect::<Vec<_>>(),
    );
    g.bench_function("revocation_lookup_1000", |b| {
        b.iter(|| revoked.is_revoked(black_box("not-revoked-jti-0123456789"), Some("kid"), f.now))
    });
    g.finish();
}

/// The ratio targets, measured so that the machine's drift cancels: criterion times each
/// benchmark in its own window, and on this shared VM two windows a minute apart differ by up
/// to ±20 %, more than the margins being judged. Here one loop runs both operations
/// alternately (order swapped every pair) and times each, so both see the same machine;
/// per-block ratios are then summarised by their median and quartiles.
///
/// Run with `cargo bench -p latchkey-bench --bench core -- ratios` (also part of the full run).
fn ratios(f: &Fixture) {
    let token = f.mint(Algorithm::EdDSA);
    let (input, sig) = split(&token);
    let sig64: [u8; 64] = sig.as_slice().try_into().expect("64 bytes");
    let dalek_sig = ed25519_dalek::Signature::from_bytes(&sig64);
    let dalek_public = ed25519_dalek::SigningKey::from_pkcs8_der(&f.ed_pkcs8)
        .expect("dalek import")
        .verifying_key();
    let lc_key = lc::Ed25519KeyPair::from_pkcs8(&f.ed_pkcs8).expect("aws-lc import");
    let lc_public = lc::ParsedPublicKey::new(&lc::ED25519, &f.ed_public).expect("aws-lc public");
    let jwt_enc = jwt::EncodingKey::from_ed_der(&f.ed_pkcs8);
    let jwt_header = f.jwt_header(jwt::Algorithm::EdDSA);
    let jwt_claims = f.jwt_claims();
    let batch = f.distinct_tokens(64);
    let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
    let batch_256 = f.distinct_tokens(256);
    let batch_256: Vec<&str> = batch_256.iter().map(String::as_str).collect();

    let raw_verify_strict = || {
        dalek_public
            .verify_strict(black_box(input), &dalek_sig)
            .expect("valid")
    };
    let raw_verify_lc = || lc_public.verify_sig(black_box(input), &sig).expect("valid");
    let latchkey_verify = || {
        f.verifier.verify(black_box(&token), f.now).expect("valid");
    };
    let latchkey_batch_64 = || {
        let out = f.verifier.verify_batch(black_box(&batch), f.now);
        assert!(out.iter().all(Result::is_ok));
    };
    let latchkey_batch_256 = || {
        let out = f.verifier.verify_batch(black_box(&batch_256), f.now);
        assert!(out.iter().all(Result::is_ok));
    };
    let latchkey_single_256 = || {
        for t in &batch_256 {
            f.verifier.verify(black_box(t), f.now).expect("valid");
        }
    };
    let latchkey_single_64 = || {
        for t in &batch {
            f.verifier.verify(black_box(t), f.now).expect("valid");
        }
    };
    let raw_strict_64 = || {
        for _ in 0..64 {
            raw_verify_strict();
        }
    };
    let raw_sign = || {
        black_box(lc_key.sign(black_box(input)));
    };
    let jwt_encode = || {
        black_box(jwt::encode(&jwt_header, black_box(&jwt_claims), &jwt_enc).expect("encode"));
    };
    let claims = std::cell::RefCell::new(f.claims.clone());
    let latchkey_mint = || {
        let mut claims = claims.borrow_mut();
        // A fresh jti per token, as the server mints them.
        claims.jti = Some(f.jti.next_compact());
        black_box(
            f.ring
                .mint(Algorithm::EdDSA, TokenType::AccessToken, black_box(&claims))
                .expect("mint"),
        );
    };

    println!(
        "\nratios (interleaved; throughput of the first over the second, median [p25, p75] of \
         per-block ratios); single Ed25519 verification backend: {:?}",
        latchkey_core::ed25519_backend()
    );
    let pairs: [Pair<'_>; 8] = [
        (
            "eddsa mint / raw aws-lc-rs sign",
            &latchkey_mint,
            &raw_sign,
            200,
            100,
        ),
        (
            "eddsa mint / jsonwebtoken encode",
            &latchkey_mint,
            &jwt_encode,
            200,
            50,
        ),
        (
            // The bound on the line above: a mint can at best cost one raw signature.
            "raw aws-lc-rs sign / jsonwebtoken encode",
            &raw_sign,
            &jwt_encode,
            200,
            50,
        ),
        (
            "eddsa verify / raw dalek verify_strict",
            &latchkey_verify,
            &raw_verify_strict,
            100,
            40,
        ),
        (
            "eddsa verify / raw aws-lc-rs verify",
            &latchkey_verify,
            &raw_verify_lc,
            100,
            40,
        ),
        (
            "eddsa verify_batch(64) / 64 single verify",
            &latchkey_batch_64,
            &latchkey_single_64,
            30,
            2,
        ),
        (
            "eddsa verify_batch(64) / 64 raw dalek verify_strict",
            &latchkey_batch_64,
            &raw_strict_64,
            30,
            2,
        ),
        (
            "eddsa verify_batch(256) / 256 single verify",
            &latchkey_batch_256,
            &latchkey_single_256,
            16,
            1,
        ),
    ];
    for (name, ours, theirs, blocks, per_block) in pairs {
        report_ratio(name, &interleaved(ours, theirs, blocks, per_block));
    }

    // Scaling: whole blocks alternate between one thread and two threads.
    let scaling: [(&str, &(dyn Fn() + Sync), u64); 5] = [
        (
            "eddsa mint, 2 threads / 1 thread",
            &|| {
                black_box(
                    f.ring
                        .mint(
                            Algorithm::EdDSA,
                            TokenType::AccessToken,
                            black_box(&f.claims),
                        )
                        .expect("mint"),
                );
            },
            400,
        ),
        (
            "eddsa verify, 2 threads / 1 thread",
            &latchkey_verify_sync(f, &token),
            100,
        ),
        (
            "raw aws-lc-rs sign, 2 threads / 1 thread",
            &|| {
                black_box(lc_key.sign(black_box(input)));
            },
            400,
        ),
        (
            "raw aws-lc-rs verify, 2 threads / 1 thread",
            &|| {
                lc_public.verify_sig(black_box(input), &sig).expect("valid");
            },
            100,
        ),
        (
            "raw dalek verify_strict, 2 threads / 1 thread",
            &|| {
                dalek_public
                    .verify_strict(black_box(input), &dalek_sig)
                    .expect("valid");
            },
            100,
        ),
    ];
    for (name, op, per_thread) in scaling {
        report_ratio(name, &two_vs_one(op, 100, per_thread));
    }
}

fn latchkey_verify_sync<'a>(f: &'a Fixture, token: &'a str) -> impl Fn() + Sync + 'a {
    move || {
        f.verifier.verify(black_box(token), f.now).expect("valid");
    }
}

/// (name, first op, second op, blocks, pairs per block).
type Pair<'a> = (&'a str, &'a dyn Fn(), &'a dyn Fn(), usize, usize);

/// Per block: (time of the first op, time of the second op), each summed over the block.
struct Blocks {
    first: Vec<Duration>,
    second: Vec<Duration>,
    per_block: usize,
}

fn interleaved(a: &dyn Fn(), b: &dyn Fn(), blocks: usize, per_block: usize) -> Blocks {
    for _ in 0..per_block.max(20) {
        a();
        b();
    }
    let mut out = Blocks {
        first: Vec::with_capacity(blocks),
        second: Vec::with_capacity(blocks),
        per_block,
    };
    for _ in 0..blocks {
        let (mut ta, mut tb) = (Duration::ZERO, Duration::ZERO);
        for i in 0..per_block {
            // Swap the order every pair so neither side always runs with warm caches.
            let (x, y, tx, ty) = if i % 2 == 0 {
                (a, b, &mut ta, &mut tb)
            } else {
                (b, a, &mut tb, &mut ta)
            };
            let t0 = Instant::now();
            x();
            let t1 = Instant::now();
            y();
            *tx += t1 - t0;
            *ty += t1.elapsed();
        }
        out.first.push(ta);
        out.second.push(tb);
    }
    out
}

/// Blocks alternate between one thread doing `per_thread` ops and two threads doing
/// `per_thread` ops each; "time" is wall time per op, so first / second is 1-thread rate over
/// 2-thread rate, reported inverted by `report_ratio` as 2-thread / 1-thread.
fn two_vs_one(op: &(dyn Fn() + Sync), blocks: usize, per_thread: u64) -> Blocks {
    let run = |threads: u64| -> Duration {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..per_thread {
                        op();
                    }
                });
            }
        });
        start.elapsed() / threads as u32
    };
    run(2);
    let mut out = Blocks {
        first: Vec::with_capacity(blocks),
        second: Vec::with_capacity(blocks),
        per_block: per_thread as usize,
    };
    for i in 0..blocks {
        // `first` = two threads (wall time per op), `second` = one thread.
        let (two, one) = if i % 2 == 0 {
            let t = run(2);
            (t, run(1))
        } else {
            let o = run(1);
            (run(2), o)
        };
        out.first.push(two);
        out.second.push(one);
    }
    out
}

fn report_ratio(name: &str, blocks: &Blocks) {
    let per_op = |d: &Duration| d.as_secs_f64() * 1e6 / blocks.per_block as f64;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.25), at(0.75))
    };
    let (a, _, _) = median(blocks.first.iter().map(per_op).collect());
    let (b, _, _) = median(blocks.second.iter().map(per_op).collect());
    // Throughput ratio first / second = time second / time first, block by block.
    let (r, lo, hi) = median(
        blocks
            .first
            .iter()
            .zip(&blocks.second)
            .map(|(x, y)| y.as_secs_f64() / x.as_secs_f64())
            .collect(),
    );
    println!(
        "ratio {name}: {r:.3} [{lo:.3}, {hi:.3}]  (median µs per op: {a:.2} vs {b:.2}; {} blocks of {})",
        blocks.first.len(),
        blocks.per_block
    );
}

fn benches(c: &mut Criterion) {
    let f = Fixture::new();
    parts(c, &f);
    eddsa(c, &f);
    hmac_group(c, &f);
    rsa_group(c, &f);
    es256_group(c, &f);
    scaling(c, &f);
}

criterion_group! {
    name = core;
    // Short runs: the whole suite must finish in about six minutes on two cores.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}

/// criterion's groups, then the interleaved ratios unless a filter excludes them (`cargo
/// bench … -- ratios` runs only the ratios; any other filter skips them).
fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref() != Some("ratios") {
        core();
    }
    if filter.as_deref().is_none_or(|f| f == "ratios") {
        ratios(&Fixture::new());
    }
    Criterion::default().configure_from_args().final_summary();
}
