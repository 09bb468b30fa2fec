//! One invocation: check the target, prepare credentials, warm up, run the timed phase on
//! every worker thread while a progress bar shows the live rate, then report.

use std::collections::HashSet;
use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use latchkey_core::jti::JtiGenerator;

use crate::Args;
use crate::assertion::{AssertionMinter, AssertionSpec, RsaSigner, header_b64, premint};
use crate::client::Client;
use crate::engine::{self, EngineConfig, Progress, Rate};
use crate::error::Error;
use crate::http::{Connection, Request, form_encode};
use crate::prepare::{self, Agents, Operator, PrepareConfig, SecretAgent, str_member};
use crate::scenario::{Endpoints, Op, Scenario, Workload, agent_key, connection_mode, unix_now};
use crate::stats::{Stats, Summary};
use crate::target::{Reach, Scheme, Target};
use crate::tls::{ClientTls, Resumption};

/// Access tokens fetched for the introspection scenario.
const INTROSPECT_TOKENS: usize = 16;
/// How long to wait for an authority that asks to retry later (a replay floor lasts up to
/// its leeway, 60 s by default).
const READY_WAIT: Duration = Duration::from_secs(180);

pub fn run(args: &Args) -> Result<(), Error> {
    let reach = if args.allow_remote {
        Reach::AllowRemote
    } else {
        Reach::LoopbackOnly
    };
    let target = Arc::new(Target::parse(&args.target, reach)?);
    let tls = match (target.scheme, &args.ca) {
        (Scheme::Https, Some(ca)) => Some(crate::tls::client_config(&ClientTls {
            ca: ca.clone(),
            identity: args.client_cert.clone().zip(args.client_key.clone()),
            resumption: if args.no_resumption {
                Resumption::Off
            } else {
                Resumption::On
            },
        })?),
        (Scheme::Https, None) => {
            return Err(Error::Usage(
                "an https:// target needs --ca <ca.pem> (Latchkey writes <data-dir>/ca.pem)".into(),
            ));
        }
        (Scheme::Http, _) if args.client_cert.is_some() => {
            return Err(Error::Usage(
                "--client-cert needs an https:// target".into(),
            ));
        }
        (Scheme::Http, _) if !args.insecure_plain => {
            return Err(Error::Usage(
                "an http:// target sends credentials in clear: pass --insecure-plain to confirm"
                    .into(),
            ));
        }
        (Scheme::Http, _) => None,
    };
    check_flags(args)?;
    let interactive = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let say = |msg: &str| {
        if !args.json || interactive {
            eprintln!("{msg}");
        }
    };
    let needs = args.scenario.needs();
    let mut notes = Vec::new();

    // ---- Credentials.
    let operator = match &args.credentials {
        Some(path) => Some(Operator::from_file(path)?),
        None => None,
    };
    let mut agents = match &args.agents_file {
        Some(path) => prepare::load(path)?,
        None => Agents::default(),
    };
    let static_client = args.client_id.is_some();
    // Deletes the agents this run creates when `run` returns, whichever way.
    let mut _cleanup: Option<Cleanup> = None;
    if let (Some(id), Some(secret)) = (&args.client_id, &args.client_secret) {
        if args.scenario != Scenario::TokenSecretJwt {
            return Err(Error::Usage(
                "--client-id works with --scenario token-secret-jwt only".into(),
            ));
        }
        agents = Agents {
            secret: vec![SecretAgent {
                id: id.clone(),
                secret: secret.clone(),
                rat: String::new(),
                registration_path: String::new(),
            }],
            ..Agents::default()
        };
    } else {
        let rsa_agents = args
            .rsa_agents
            .unwrap_or(if needs.rsa_agents { 10 } else { 0 });
        let cfg = PrepareConfig {
            secret_agents: if needs.secret_agents || needs.introspect_tokens {
                args.agents
            } else {
                0
            },
            rsa_agents,
            rsa_keys: args.rsa_keys,
            mtls_agents: if needs.mtls_agents {
                args.mtls_agents.unwrap_or(args.agents)
            } else {
                0
            },
            mtls_subject_dn: args.mtls_subject_dn.clone(),
            threads: args.prepare_threads,
        };
        let mtls_have = agents
            .mtls
            .iter()
            .filter(|a| Some(&a.subject_dn) == cfg.mtls_subject_dn.as_ref())
            .count();
        let missing = cfg.secret_agents.saturating_sub(agents.secret.len())
            + cfg.rsa_agents.saturating_sub(agents.rsa.len())
            + cfg.mtls_agents.saturating_sub(mtls_have);
        if missing > 0 {
            let op = operator.as_ref().ok_or_else(|| {
                Error::Usage(format!(
                    "{missing} agent(s) to create: pass --credentials <data-dir>/admin-client.json"
                ))
            })?;
            say(&format!(
                "preparing {missing} agent(s) through the onboarding API"
            ));
            let bar = bar(interactive, missing as u64, "agents");
            let t0 = Instant::now();
            // Without a terminal (no bar), a line every --progress-every.
            let lines = !std::io::stderr().is_terminal();
            let last_line = std::sync::Mutex::new(t0);
            let progress = |n: u64| {
                bar.set_position(n);
                if lines
                    && let Ok(mut last) = last_line.try_lock()
                    && last.elapsed() >= args.progress_every
                {
                    *last = Instant::now();
                    eprintln!("progress: preparing agents: {n} of {missing} done");
                }
            };
            let had: HashSet<String> = agent_ids(&agents).collect();
            let result = prepare::prepare(&target, tls.as_ref(), op, &cfg, &mut agents, &progress);
            bar.finish_and_clear();
            if let Some(path) = &args.agents_file {
                prepare::save(path, &agents)?;
            } else if !args.keep_agents {
                _cleanup = Some(Cleanup {
                    target: Arc::clone(&target),
                    tls: tls.clone(),
                    operator: op.clone(),
                    ids: agent_ids(&agents).filter(|id| !had.contains(id)).collect(),
                    tell: !args.json || interactive,
                });
            }
            result?;
            let secs = t0.elapsed().as_secs_f64();
            notes.push(format!(
                "prepared {missing} agent(s) in {secs:.1} s ({:.0} agents/s: create + boarding configuration + register)",
                missing as f64 / secs
            ));
        }
    }
    if needs.mtls_agents {
        if args.client_cert.is_none() {
            return Err(Error::Usage(
                "token-mtls authenticates with a certificate: pass --client-cert and --client-key"
                    .into(),
            ));
        }
        // The workload only uses the ids of these agents; they have no secret.
        agents.secret = agents
            .mtls
            .iter()
            .filter(|a| {
                args.mtls_subject_dn
                    .as_ref()
                    .is_none_or(|dn| *dn == a.subject_dn)
            })
            .map(|a| SecretAgent {
                id: a.id.clone(),
                secret: String::new(),
                rat: a.rat.clone(),
                registration_path: a.registration_path.clone(),
            })
            .collect();
        if agents.secret.is_empty() {
            return Err(Error::Usage(
                "no tls_client_auth agents to request tokens for".into(),
            ));
        }
    }
    if needs.rsa_agents && agents.rsa.is_empty() {
        return Err(Error::Usage("the scenario needs --rsa-agents > 0".into()));
    }
    if needs.operator && operator.is_none() {
        return Err(Error::Usage(
            "the scenario needs --credentials <data-dir>/admin-client.json".into(),
        ));
    }

    // ---- Assertions.
    let jti = Arc::new(JtiGenerator::random()?);
    let tenant = args
        .tenant
        .clone()
        .or_else(|| (!static_client).then(|| agents.tenant.clone()).flatten());
    let spec = AssertionSpec {
        audience: args.audiences.clone(),
        tenant,
        lifetime: args.assertion_lifetime.as_secs().max(1),
    };
    let endpoints = Endpoints {
        token_path: args.token_path.clone(),
        operator_basic: operator.as_ref().map(|o| o.basic.clone()),
        host: target.host_header(),
        connection: if args.new_connection_per_request {
            Connection::Close
        } else {
            Connection::KeepAlive
        },
        extra_form: match (&args.client_id, args.send_client_id) {
            (Some(id), true) => {
                let mut s = String::from("&client_id=");
                form_encode(id, &mut s);
                s
            }
            _ => String::new(),
        },
    };
    let mut probe = Client::new(Arc::clone(&target), tls.clone());
    let mut minter = AssertionMinter::new(spec.clone(), Arc::clone(&jti));
    let uses_tokens = needs.secret_agents || needs.rsa_agents || needs.introspect_tokens;
    if uses_tokens && let Some(first) = agents.secret.first().cloned() {
        wait_until_ready(&mut probe, &mut minter, &endpoints, &first, &say)?;
    }
    let introspect_tokens = if needs.introspect_tokens {
        let mut tokens = Vec::new();
        for a in agents.secret.iter().take(INTROSPECT_TOKENS) {
            let r = token_request(&mut probe, &mut minter, &endpoints, a)?;
            tokens.push(str_member(
                &prepare::expect_json(&r, 200, "agent token")?,
                "access_token",
                "agent token",
            )?);
        }
        tokens
    } else {
        Vec::new()
    };
    let pool = if needs.rsa_agents {
        let count = args.rsa_pool.unwrap_or_else(|| pool_size(args));
        let minting = Duration::from_millis(3 * count as u64 / cores() as u64);
        let run_for = args.duration.unwrap_or(if args.requests.is_some() {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(10)
        });
        let pool_spec = AssertionSpec {
            lifetime: (spec.lifetime + (minting + run_for).as_secs()).min(24 * 3600),
            ..spec.clone()
        };
        let signers: Vec<RsaSigner<'_>> = agents
            .rsa
            .iter()
            .map(|a| RsaSigner {
                client_id: &a.id,
                key: &agents.keys[a.key],
            })
            .collect();
        say(&format!(
            "pre-minting {count} RS256 assertions on {} thread(s)",
            cores()
        ));
        let t0 = Instant::now();
        let pool = premint(&signers, count, cores(), &pool_spec, &jti, unix_now())?;
        notes.push(format!(
            "private_key_jwt: {} RS256 assertions (distinct jti, exp = iat + {} s) were pre-minted in {:.1} s before the timed phase; RSA-3072 signing is too slow to do per request without making the client the bottleneck",
            pool.len(),
            pool_spec.lifetime,
            t0.elapsed().as_secs_f64()
        ));
        pool
    } else {
        Vec::new()
    };

    // ---- The attack, if any, gets a head start so the timed phase runs under it.
    let attack = match args.attack {
        None => None,
        Some(kind) => {
            say(&format!(
                "{}: {} hostile connection(s), {:?} ramp",
                kind.name(),
                args.attack_connections,
                args.attack_ramp
            ));
            let running = crate::attack::start(crate::attack::AttackConfig {
                attack: kind,
                target: Arc::clone(&target),
                tls: tls.clone(),
                connections: args.attack_connections,
                body: args.attack_body,
                token_path: args.token_path.clone(),
                client_id: args.attack_client_id.clone(),
            })
            .map_err(|e| Error::io("starting the attack thread", e))?;
            std::thread::sleep(args.attack_ramp);
            Some((kind, running))
        }
    };

    // ---- Dashboard pollers, started before the timed phase so it runs under them.
    let dashboard = if args.pollers > 0 {
        let Some(op) = operator.clone() else {
            return Err(Error::Usage(
                "--pollers needs --credentials of an operator of the agents' tenant".into(),
            ));
        };
        say(&format!(
            "dashboard: {} poller(s) every {:?} on {}",
            args.pollers, args.poll_interval, args.poll_path
        ));
        Some(crate::dashboard::start(
            crate::dashboard::DashboardConfig {
                target: Arc::clone(&target),
                tls: tls.clone(),
                operator: op,
                pollers: args.pollers,
                interval: args.poll_interval,
                path: args.poll_path.clone(),
            },
        )?)
    } else {
        None
    };

    // ---- Workers.
    let threads = args.threads.clamp(1, args.connections.max(1));
    let introspect_tokens = Arc::new(introspect_tokens);
    let secret_count = agents.secret.len();
    let (token_agents, rotation_agents) = split_rotation(args.scenario, &mut agents);
    let mut token_shares = deal(token_agents, threads);
    let mut rotation_shares = deal(rotation_agents, threads);
    let mut pool_shares = deal(pool, threads);
    let duration = match (args.duration, args.requests) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let progress = Progress::default();
    let barrier = Barrier::new(threads + 1);
    let mut mode = match args.rate {
        Some(r) => format!("open loop at {r} req/s"),
        None => "closed loop".to_owned(),
    };
    if let Some(kind) = args.attack {
        mode = format!(
            "{mode}, under {} x {}",
            kind.name(),
            args.attack_connections
        );
    }
    say(&format!(
        "{}: {mode}, {} connection(s) ({}), {threads} thread(s), {}",
        args.scenario.name(),
        args.connections,
        connection_mode(endpoints.connection),
        match (duration, args.requests) {
            (Some(d), Some(n)) => format!("{n} requests or {d:?}"),
            (Some(d), None) => format!("{d:?}"),
            (None, Some(n)) => format!("{n} requests"),
            (None, None) => String::new(),
        }
    ));
    let mut workers = Vec::with_capacity(threads);
    for t in 0..threads {
        let connections = share(args.connections, threads, t);
        let cfg = EngineConfig {
            target: Arc::clone(&target),
            tls: tls.clone(),
            connections,
            connection: endpoints.connection,
            budget: args.requests.map(|n| share(n as usize, threads, t) as u64),
            duration,
            rate: args.rate.map(|per_second| Rate {
                per_second,
                index: t,
                of: threads,
            }),
            timeout: args.timeout,
            give_up: args.give_up_after,
        };
        let workload = Workload::new(
            args.scenario,
            endpoints.clone(),
            AssertionMinter::new(spec.clone(), Arc::clone(&jti)),
            std::mem::take(&mut token_shares[t]),
            std::mem::take(&mut rotation_shares[t]),
            std::mem::take(&mut pool_shares[t]),
            Arc::clone(&introspect_tokens),
            0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1),
        );
        workers.push((cfg, workload));
    }
    let total = args.requests;
    let results: Vec<Result<engine::WorkerResult, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|(cfg, workload)| {
                let (progress, barrier) = (&progress, &barrier);
                scope.spawn(move || engine::run(&cfg, workload, progress, barrier))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let bar = match total {
            Some(n) => bar(interactive, n, "requests"),
            None => bar(
                interactive,
                duration.map_or(0, |d| d.as_millis() as u64),
                "ms",
            ),
        };
        let mut last = (Instant::now(), 0u64);
        // Without a terminal there is no bar: a line every --progress-every instead, so a log
        // shows the run is alive (and how fast).
        let lines = !std::io::stderr().is_terminal();
        let mut last_line = (start, 0u64);
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            let done = progress.done.load(Ordering::Relaxed);
            let errors = progress.errors.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, done);
            if lines && now.duration_since(last_line.0) >= args.progress_every {
                let span = now.duration_since(last_line.0).as_secs_f64();
                eprintln!(
                    "progress: {:.1} s, {done} done, {errors} errors, {:.0} req/s, {} connection attempts",
                    now.duration_since(start).as_secs_f64(),
                    (done - last_line.1) as f64 / span,
                    progress.connects.load(Ordering::Relaxed),
                );
                last_line = (now, done);
            }
            match total {
                Some(_) => bar.set_position(done),
                None => bar.set_position(start.elapsed().as_millis() as u64),
            }
            bar.set_message(format!("{done} done, {errors} errors, {rate:.0} req/s"));
        }
        bar.finish_and_clear();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Protocol("worker thread panicked".into())))
            })
            .collect()
    });

    // ---- Report.
    let pages = dashboard.map(crate::dashboard::Running::stop);
    if let Some((kind, running)) = attack {
        let r = running.stop();
        notes.push(format!(
            "under {}: {} hostile connection(s) wanted, at most {} open at once; {} opened, {} closed by the server, {} connection attempts failed",
            kind.name(),
            args.attack_connections,
            r.peak_open,
            r.opened,
            r.closed_by_server,
            r.failed_connects
        ));
        if kind == crate::attack::Attack::RefusedAuth {
            notes.push(format!(
                "refused-auth: {} requests refused (401/429), {} answered otherwise",
                r.refused, r.other_answers
            ));
        }
    }
    let mut stats = Stats::default();
    let mut elapsed = Duration::ZERO;
    let mut unsent = 0;
    let mut exhausted = false;
    let mut lost = 0;
    let mut back_token = Vec::new();
    let mut back_rotation = Vec::new();
    for r in results {
        let r = r?;
        stats.merge(&r.stats);
        elapsed = elapsed.max(r.elapsed);
        unsent += r.unsent;
        exhausted |= r.pool_exhausted;
        lost += r.workload.lost_rotation_agents;
        let (t, rot) = r.workload.into_agents();
        back_token.extend(t);
        back_rotation.extend(rot);
    }
    if exhausted {
        notes.push(
            "the pre-minted RS256 pool ran out: the run ended early (raise --rsa-pool)".into(),
        );
    }
    if unsent > 0 {
        notes.push(format!(
            "{unsent} scheduled request(s) were never sent: the server fell behind the rate"
        ));
    }
    if lost > 0 {
        notes.push(format!(
            "{lost} rotation(s) failed in transport: those agents' registration access tokens are unknown"
        ));
    }
    if args.scenario.cycle().contains(&Op::Rotate)
        && let Some(path) = &args.agents_file
    {
        // Rotations changed credentials: keep the file usable.
        agents.secret = back_rotation;
        agents.secret.extend(back_token);
        prepare::save(path, &agents)?;
    }
    let summary = Summary {
        scenario: args.scenario.name().to_owned(),
        target: args.target.clone(),
        mode: format!("{mode}, {}", connection_mode(endpoints.connection)),
        connections: args.connections,
        threads,
        agents: if static_client { 1 } else { secret_count },
        rsa_agents: agents.rsa.len(),
        elapsed,
        stats,
        notes,
        pages,
    };
    if let Some(path) = &args.plot {
        std::fs::write(path, crate::plot::svg(&summary))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    if args.json {
        println!("{:#}", summary.to_json());
    } else {
        print!("{summary}");
    }
    Ok(())
}

/// Every agent id in `agents`.
fn agent_ids(agents: &Agents) -> impl Iterator<Item = String> + '_ {
    let secret = agents.secret.iter().map(|a| a.id.clone());
    let rsa = agents.rsa.iter().map(|a| a.id.clone());
    secret
        .chain(rsa)
        .chain(agents.mtls.iter().map(|a| a.id.clone()))
}

/// The agents a run created, deleted when the run ends (see `--keep-agents`).
struct Cleanup {
    target: Arc<Target>,
    tls: Option<Arc<rustls::ClientConfig>>,
    operator: Operator,
    ids: Vec<String>,
    /// Say what was removed (not when only JSON should be printed).
    tell: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        match prepare::remove(&self.target, self.tls.as_ref(), &self.operator, &self.ids) {
            Ok(()) if self.tell => eprintln!(
                "deleted the {} agent(s) this run created (--keep-agents keeps them)",
                self.ids.len()
            ),
            Ok(()) => {}
            // The run's own result (success or error) has been reported; this is extra.
            Err(e) => eprintln!(
                "latchkey-loadgen: could not delete the {} agent(s) this run created: {e}",
                self.ids.len()
            ),
        }
    }
}

fn check_flags(args: &Args) -> Result<(), Error> {
    if args.connections == 0 {
        return Err(Error::Usage("--connections must be at least 1".into()));
    }
    if args.progress_every.is_zero() {
        return Err(Error::Usage("--progress-every must be more than 0".into()));
    }
    if args.requests == Some(0) {
        return Err(Error::Usage("--requests must be at least 1".into()));
    }
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err(Error::Usage("--rate must be a positive number".into()));
    }
    if args.scenario == Scenario::Mix && args.agents < 2 && args.client_id.is_none() {
        return Err(Error::Usage("the mix needs --agents 2 or more".into()));
    }
    Ok(())
}

/// Splits the SHARED_SECRET agents into token agents and rotation agents: all of them rotate
/// in `register-rotate`; an eighth (at least one) in the mix, so a rotation never races a
/// token request of the same agent.
fn split_rotation(scenario: Scenario, agents: &mut Agents) -> (Vec<SecretAgent>, Vec<SecretAgent>) {
    let all = std::mem::take(&mut agents.secret);
    match scenario {
        Scenario::RegisterRotate => (Vec::new(), all),
        Scenario::Mix => {
            let n = (all.len() / 8).max(1);
            let mut all = all;
            let token = all.split_off(n);
            (token, all)
        }
        _ => (all, Vec::new()),
    }
}

/// Deals `items` round-robin into `n` hands.
fn deal<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut hands: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        hands[i % n].push(item);
    }
    hands
}

/// Worker `t`'s share of `total` over `n` workers.
fn share(total: usize, n: usize, t: usize) -> usize {
    total / n + usize::from(t < total % n)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// RS256 assertions to pre-mint when --rsa-pool is not given.
fn pool_size(args: &Args) -> usize {
    let ops = args.scenario.cycle();
    let fraction =
        ops.iter().filter(|o| **o == Op::PrivateKeyJwt).count() as f64 / ops.len() as f64;
    let planned = match (args.requests, args.rate, args.duration) {
        (Some(n), _, _) => n as f64,
        (None, Some(rate), d) => rate * d.unwrap_or(Duration::from_secs(10)).as_secs_f64(),
        (None, None, _) => 20_000.0 / fraction,
    };
    (planned * fraction).ceil() as usize + args.connections
}

fn bar(interactive: bool, len: u64, unit: &str) -> ProgressBar {
    if !interactive {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(len);
    let template = format!("{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {unit}  {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// One agent token request on the blocking client.
fn token_request(
    client: &mut Client,
    minter: &mut AssertionMinter,
    endpoints: &Endpoints,
    agent: &SecretAgent,
) -> Result<crate::http::Response, Error> {
    let key = agent_key(agent)?;
    let assertion = minter.mint(&agent.id, &key, &header_b64(&key), unix_now())?;
    let mut form = String::from(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=",
    );
    form.push_str(&assertion);
    form.push_str(&endpoints.extra_form);
    client.request(&Request {
        method: "POST",
        path: &endpoints.token_path,
        headers: &[],
        content_type: Some("application/x-www-form-urlencoded"),
        body: form.as_bytes(),
    })
}

/// Sends token requests until one succeeds. A Latchkey started without its replay log (a data
/// directory from a release before it) or after a machine crash answers 503 with
/// `Retry-After` for up to its leeway (it cannot yet tell fresh assertions from replays); any
/// other refusal is an error that the timed phase would only repeat.
fn wait_until_ready(
    client: &mut Client,
    minter: &mut AssertionMinter,
    endpoints: &Endpoints,
    agent: &SecretAgent,
    say: &dyn Fn(&str),
) -> Result<(), Error> {
    let end = Instant::now() + READY_WAIT;
    let mut told = false;
    loop {
        let r = token_request(client, minter, endpoints, agent)?;
        match r.status {
            200 => return Ok(()),
            503 if Instant::now() < end => {
                if !told {
                    say("the server asks to retry later (a fresh start?); waiting");
                    told = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            status => {
                return Err(Error::Http {
                    step: "probe token request".into(),
                    status,
                    body: r.text(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, n) in [(10, 3), (2, 4), (0, 1), (7, 7)] {
            let sum: usize = (0..n).map(|t| share(total, n, t)).sum();
            assert_eq!(sum, total);
        }
        let hands = deal((0..7).collect::<Vec<_>>(), 3);
        assert_eq!(hands, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
    }
}
