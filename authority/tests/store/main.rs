//! Integration tests of the store: a model-based test with injected I/O faults, hostile ops
//! mixed into commit groups, a kill -9 crash test, and the format fixtures written by earlier
//! releases.

mod crash;
mod fixtures;
mod hostile;
mod model;
mod util;
