//! End-to-end tests: each drives the real `latchkey` binary. One test binary, one module per
//! area, shared helpers in `util`.

mod util;
