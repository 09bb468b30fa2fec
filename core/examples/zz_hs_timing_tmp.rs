//! TEMPORARY timing harness for the HS256 assertion verify path (removed before hand-back).
use std::hint::black_box;
use std::time::Instant;

use latchkey_core::{Algorithm, SigningKey, TokenType, Validation, VerifyingKey, b64, jws};

const AUD: &str = "https://latchkey.test/api";
const NOW: u64 = 1_800_000_000;

fn token(header: &str, payload: &str, key: &SigningKey) -> String {
    let mut t = format!(
        "{}.{}",
        b64::encode(header.as_bytes()),
        b64::encode(payload.as_bytes())
    );
    let mut sig = String::new();
    key.sign_into(t.as_bytes(), &mut sig).expect("sign");
    t.push('.');
    t.push_str(&sig);
    t
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "time".into());
    let n: u64 = args.next().map_or(2_000_000, |s| s.parse().expect("n"));
    let secret = [0x5a; 32];
    let sk = SigningKey::hmac(Algorithm::HS256, &secret).expect("key");
    let key = VerifyingKey::hmac(Algorithm::HS256, &secret).expect("key");
    // Same shape as bench/benches/core.rs hs256_assertion_verify (jsonwebtoken's output:
    // header {"typ","alg"}, claims sorted by serde_json::Map).
    let bench = token(
        r#"{"typ":"JWT","alg":"HS256"}"#,
        &format!(
            r#"{{"aud":"{AUD}","exp":{},"iat":{NOW},"iss":"tenant-agent-0001","jti":"5b0b4e61-2b6f-4a7e-9f3c-0d8d2f1e6a77","sub":"tenant-agent-0001"}}"#,
            NOW + 300
        ),
        &sk,
    );
    // A MindSphere-style assertion with extra members (bench/src/assertion.rs).
    let mdsp = token(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(
            r#"{{"iss":"tenant-agent-0001","sub":"tenant-agent-0001","aud":["southgate"],"exp":{},"nbf":{NOW},"iat":{NOW},"jti":"5b0b4e61-2b6f-4a7e-9f3c-0d8d2f1e6a77","schemas":["urn:siemens:mindsphere:v1"],"ten":"main"}}"#,
            NOW + 300
        ),
        &sk,
    );
    let mut v = Validation::new(TokenType::ClientAssertion);
    v.audiences = vec![AUD.into(), "southgate".into()];
    v.max_lifetime = Some(3600);
    let which = args.next().unwrap_or_else(|| "bench".into());
    let t = if which == "mdsp" { &mdsp } else { &bench };
    jws::verify(t, &key, &v, NOW).expect("valid");
    if mode == "min" {
        // Minimum over many short trials: approximates an uncontended core on a busy machine.
        let (input, sig) = t.rsplit_once('.').expect("dot");
        let sig = b64::decode(sig.as_bytes()).expect("sig");
        let mut best = [f64::MAX; 2];
        for _ in 0..n {
            let s = Instant::now();
            for _ in 0..2000 {
                black_box(jws::verify(black_box(t), &key, &v, NOW).expect("valid"));
            }
            best[0] = best[0].min(s.elapsed().as_nanos() as f64 / 2000.0);
            let s = Instant::now();
            for _ in 0..2000 {
                key.verify(Algorithm::HS256, black_box(input.as_bytes()), &sig)
                    .expect("ok");
            }
            best[1] = best[1].min(s.elapsed().as_nanos() as f64 / 2000.0);
        }
        println!(
            "{which}: verify min {:.0} ns ({:.0}/s), raw hmac min {:.0} ns ({:.0}/s)",
            best[0],
            1e9 / best[0],
            best[1],
            1e9 / best[1]
        );
        return;
    }
    let start = Instant::now();
    match mode.as_str() {
        "time" | "count" => {
            for _ in 0..n {
                let r = jws::verify(black_box(t), &key, &v, NOW).expect("valid");
                black_box(&r);
            }
        }
        "parse" => {
            for _ in 0..n {
                let r = jws::UnverifiedToken::parse(black_box(t)).expect("valid");
                black_box(&r);
            }
        }
        "raw" => {
            let (input, sig) = t.rsplit_once('.').expect("dot");
            let sig = b64::decode(sig.as_bytes()).expect("sig");
            for _ in 0..n {
                key.verify(Algorithm::HS256, black_box(input.as_bytes()), &sig)
                    .expect("ok");
            }
        }
        _ => panic!("mode"),
    }
    let el = start.elapsed();
    if mode != "count" {
        println!(
            "{mode} {which}: {n} in {el:?}: {:.0}/s, {:.0} ns/op",
            n as f64 / el.as_secs_f64(),
            el.as_nanos() as f64 / n as f64
        );
    }
}
