//! `latchkey-loadgen`: drives a running authority (or a peer OAuth server) over HTTP(S) and
//! reports throughput, errors by kind and latency percentiles.
//!
//! # Design decisions
//!
//! **Real onboarding, then a timed phase.** Agents are created and registered through the
//! authority's own API (as an operator would), in parallel; only then do the clocks start.
//! Nothing is read from or written to the server's data directory except the operator
//! credentials file.
//!
//! **One mio loop per thread** (`engine`), each owning a share of the connections and
//! agents, sharing nothing but two progress counters. A blocking client with a thread per
//! connection was the alternative: on a 2-core machine shared with the server, dozens of
//! threads cost context switches the server then does not get; one loop per core does not.
//!
//! **Assertions minted with `latchkey-core`.** HS256 per request (about a microsecond); RS256
//! pre-minted into a pool before the timed phase, because an RSA-3072 signature costs
//! milliseconds and would make the client the bottleneck (the output says so).
//!
//! **Honest latency.** Open loop (`--rate`) measures from each request's scheduled time, so
//! stalls are charged to every request they delay (no coordinated omission). Closed loop
//! measures from the moment the request is written.
//!
//! **Leaves no trace.** Agents a run creates are deleted when it ends, unless it was asked to
//! keep them (`--keep-agents`, or `--agents-file` to reuse them). A dead server is retried
//! with a capped exponential backoff per connection slot, then given up on.
//!
//! **Loopback only** unless `--allow-remote`: a load generator pointed at the wrong host is
//! an attack.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod assertion;
mod attack;
mod client;
mod dashboard;
mod engine;
mod error;
mod http;
mod plot;
mod prepare;
mod run;
mod scenario;
mod stats;
mod target;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::scenario::Scenario;

/// Load generator for Latchkey (and any OAuth server with a client_credentials token
/// endpoint). Refuses targets that are not loopback unless --allow-remote.
#[derive(Debug, Parser)]
#[command(name = "latchkey-loadgen", version)]
pub struct Args {
    /// Server to load: https://127.0.0.1:8443 (with --ca) or http://… (with --insecure-plain).
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// CA certificate (PEM) the server's certificate must chain to, e.g. DATA_DIR/ca.pem.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) to present: mutual TLS (e.g. from `latchkey cert issue`).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Never resume TLS sessions: with --new-connection-per-request every connection does a
    /// full handshake (the default resumes, as real clients do).
    #[arg(long)]
    pub no_resumption: bool,
    /// Allow an http:// target (Latchkey's --insecure-plain-http, or a plain peer).
    #[arg(long)]
    pub insecure_plain: bool,
    /// Allow a target that is not on this machine.
    #[arg(long)]
    pub allow_remote: bool,
    /// What to send.
    #[arg(long, value_enum, default_value = "token-secret-jwt")]
    pub scenario: Scenario,

    /// Operator credentials ({"client_id","client_secret"}), e.g. DATA_DIR/admin-client.json.
    /// Needed to create agents and for token-basic / introspect.
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// SHARED_SECRET agents to have (created through the onboarding API as needed, and
    /// deleted again when the run ends: see --keep-agents).
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// RSA_3072 agents to have [default: 10 if the scenario uses private_key_jwt, else 0].
    #[arg(long)]
    pub rsa_agents: Option<usize>,
    /// Distinct RSA-3072 keys the RSA agents share (each costs a key generation).
    #[arg(long, default_value_t = 2)]
    pub rsa_keys: usize,
    /// tls_client_auth agents to have for `token-mtls`, registered (RFC 8705) with
    /// --mtls-subject-dn [default: --agents].
    #[arg(long)]
    pub mtls_agents: Option<usize>,
    /// Subject DN the `token-mtls` agents are registered with: the subject of --client-cert,
    /// e.g. `CN=lg-agent`.
    #[arg(long, value_name = "DN")]
    pub mtls_subject_dn: Option<String>,
    /// Keep agents across runs: load this file, create only the missing agents, save it back
    /// (it holds live credentials; written with mode 0600).
    #[arg(long, value_name = "FILE")]
    pub agents_file: Option<PathBuf>,
    /// Keep the agents this run creates. By default they are deleted when the run ends, also
    /// after an error (not when the process is killed), so repeated runs do not pile agents
    /// up in the server. With --agents-file they are always kept, for the next run.
    #[arg(long)]
    pub keep_agents: bool,
    /// Parallel clients while creating agents.
    #[arg(long, default_value_t = 8)]
    pub prepare_threads: usize,

    /// Connections (kept alive unless --new-connection-per-request).
    #[arg(long, short = 'c', default_value_t = 32)]
    pub connections: usize,
    /// Open a new connection (and TLS handshake) for every request.
    #[arg(long)]
    pub new_connection_per_request: bool,
    /// Event-loop threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// How long the timed phase runs [default: 10s unless --requests is given].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// How many requests the timed phase sends.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Open loop: requests per second, on a fixed schedule (default: closed loop, as fast as
    /// responses come back).
    #[arg(long)]
    pub rate: Option<f64>,
    /// A request without a response after this long is an error.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Give up (exit with an error) when no connection to the server has succeeded for this
    /// long. Until then a slot whose connection fails retries after an exponential backoff
    /// (10 ms doubling to 1 s), so a dead server is not hammered.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub give_up_after: Duration,
    /// When standard error is not a terminal (no progress bar), print a progress line this
    /// often while agents are prepared and during the timed phase.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub progress_every: Duration,

    /// Token endpoint path of agent token requests (a peer server's may differ).
    #[arg(long, default_value = "/api/agentmanagement/v3/oauth/token")]
    pub token_path: String,
    /// A pre-registered client_secret_jwt client instead of created agents (for a peer).
    #[arg(long, requires = "client_secret")]
    pub client_id: Option<String>,
    /// The secret of --client-id.
    #[arg(long, env = "LOADGEN_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// Also send client_id in the token request form.
    #[arg(long)]
    pub send_client_id: bool,
    /// `aud` of client assertions (repeatable).
    #[arg(long = "audience", default_value = "southgate")]
    pub audiences: Vec<String>,
    /// `ten` of client assertions [default: the agents' tenant; none with --client-id].
    #[arg(long)]
    pub tenant: Option<String>,
    /// Lifetime of per-request assertions (`exp - iat`). The server remembers each `jti`
    /// until `exp` plus its leeway, so shorter is kinder to its replay cache.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub assertion_lifetime: Duration,
    /// Pre-minted RS256 assertions [default: enough for --requests, or rate × duration, else
    /// 20000]. The run ends early, with a note, if they run out.
    #[arg(long)]
    pub rsa_pool: Option<usize>,

    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot of throughput and latency over time.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,

    /// The dashboard scenario: this many operator pollers (needs --credentials of the agents'
    /// tenant), each fetching --poll-path every --poll-interval beside the measured requests;
    /// page latency is reported separately from the requests'.
    #[arg(long, default_value_t = 0)]
    pub pollers: usize,
    /// How often each poller fetches its page.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub poll_interval: Duration,
    /// The page the pollers fetch.
    #[arg(
        long,
        default_value = "/api/agentmanagement/v3/agents?page=0&size=100&sort=name"
    )]
    pub poll_path: String,

    /// Hold hostile connections open during the run (the scenario is then the legitimate
    /// client whose success rate and latency are measured): `idle` (attack-idle: never send a
    /// byte), `slow-body` (attack-slowbody: all of a large body but one byte, then stall),
    /// `keep-alive` (attack-keepalive: one request, then hold the connection idle),
    /// `refused-auth` (attack-refused-auth: operator token requests with a wrong secret, back to
    /// back, one thread per connection up to 16).
    #[arg(long, value_enum)]
    pub attack: Option<attack::Attack>,
    /// Hostile connections the attack keeps open (reopening those the server closes).
    #[arg(long, default_value_t = 1000)]
    pub attack_connections: usize,
    /// Body length the `slow-body` attack declares.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub attack_body: usize,
    /// How long the attack runs before the timed phase starts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub attack_ramp: Duration,
    /// The client id the `refused-auth` attack claims (with a wrong secret).
    #[arg(long, default_value = "admin")]
    pub attack_client_id: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkey-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
