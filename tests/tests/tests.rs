//! End-to-end tests: each drives the real `latchkey` binary. One test binary, one module per
//! area, shared helpers in `util`.

mod cluster;
mod datadir;
mod hostile;
mod http;
mod loadgen;
mod mtls;
mod newcomer;
mod onboarding;
mod operator;
mod packaging;
mod tls;
mod util;
