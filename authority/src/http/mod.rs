//! The transport: a mio event loop per core, rustls, httparse.
