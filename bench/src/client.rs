//! A small blocking keep-alive client for the preparation phase (creating and registering
//! agents, fetching tokens). The timed phase uses the event loop in `engine` instead.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::http::{self, Connection, Request, Response};
use crate::target::Target;

/// How long a preparation request may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The connection as the client sees it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One keep-alive connection, reopened when the server closes it.
pub struct Client {
    target: Arc<Target>,
    tls: Option<Arc<rustls::ClientConfig>>,
    stream: Option<Stream>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.target)
            .field("connected", &self.stream.is_some())
            .finish()
    }
}

impl Client {
    pub fn new(target: Arc<Target>, tls: Option<Arc<rustls::ClientConfig>>) -> Client {
        Client {
            target,
            tls,
            stream: None,
            buf: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Sends `req` and reads the response. A request on a reused connection that the server
    /// had closed meanwhile is retried once on a fresh one.
    pub fn request(&mut self, req: &Request<'_>) -> Result<Response, Error> {
        let reused = self.stream.is_some();
        match self.try_request(req) {
            Ok(r) => Ok(r),
            Err(e) if reused => {
                self.stream = None;
                self.try_request(req).map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }

    fn try_request(&mut self, req: &Request<'_>) -> Result<Response, Error> {
        let what = || format!("{} {}", req.method, req.path);
        if self.stream.is_none() {
            self.stream = Some(self.connect()?);
            self.buf.clear();
        }
        self.out.clear();
        req.write(
            &self.target.host_header(),
            Connection::KeepAlive,
            &mut self.out,
        );
        let result = self.exchange();
        match result {
            Ok(resp) => {
                if resp.closes {
                    self.stream = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.stream = None;
                Err(Error::io(what(), e))
            }
        }
    }

    fn exchange(&mut self) -> io::Result<Response> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        stream.write_all(&self.out)?;
        stream.flush()?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let eof = match stream.read(&mut chunk) {
                Ok(0) => true,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            match http::parse_response(&self.buf, eof, false) {
                Ok(Some((resp, used))) => {
                    self.buf.drain(..used);
                    return Ok(resp);
                }
                Ok(None) if eof => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
    }

    fn connect(&self) -> Result<Stream, Error> {
        let addr = self.target.addr;
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT)
            .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
        tcp.set_nodelay(true)
            .and_then(|()| tcp.set_read_timeout(Some(TIMEOUT)))
            .and_then(|()| tcp.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| Error::io("socket options", e))?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(config) => {
                let name = crate::tls::server_name(&self.target.host)?;
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| Error::Tls(e.to_string()))?;
                Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
            }
        }
    }
}
