//! Local sinks that record what is sent to them: a minimal HTTP/1.1 server
//! ([`HttpSink`]) and a minimal SMTP server without TLS ([`SmtpSink`]).
//!
//! Both bind `127.0.0.1:0`, serve from a background thread, and stop when
//! dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until `stop` is set, handing each to
/// `handle` (one at a time).
fn serve(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    mut handle: impl FnMut(TcpStream) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = conn else { continue };
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            handle(stream);
        }
    })
}

/// Stops a [`serve`] thread: sets the flag, then wakes `accept`.
fn shutdown(addr: SocketAddr, stop: &AtomicBool, thread: &mut Option<JoinHandle<()>>) {
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    if let Some(t) = thread.take() {
        let _ = t.join();
    }
}

fn wait_until<T: Clone>(store: &Mutex<Vec<T>>, n: usize, timeout: Duration) -> Vec<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let items = store.lock().unwrap().clone();
        if items.len() >= n || Instant::now() >= deadline {
            return items;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP request as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// In the order received, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 server on `127.0.0.1` that records every request and
/// answers each with a configurable status (200 by default) and
/// `Connection: close`.
pub struct HttpSink {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpSink {
    /// A sink that answers 200.
    pub fn start() -> Self {
        Self::with_status(200)
    }

    /// A sink that answers `status`.
    pub fn with_status(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, rq) = (status.clone(), requests.clone());
        let thread = serve(listener, stop.clone(), move |stream| {
            handle_http(stream, &st, &rq)
        });
        HttpSink {
            addr,
            status,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Changes the status answered from now on.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("{}/hook", self.base_url())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns
    /// those received (possibly fewer than `n`).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        wait_until(&self.requests, n, timeout)
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        shutdown(self.addr, &self.stop, &mut self.thread);
    }
}

fn handle_http(stream: TcpStream, status: &AtomicU16, requests: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let Some(request) = read_http_request(&mut reader) else {
        return;
    };
    requests.lock().unwrap().push(request);
    let code = status.load(Ordering::SeqCst);
    let body = format!("sink answered {code}\n");
    let answer = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(code),
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn read_line(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
    }
}

fn read_http_request(reader: &mut impl BufRead) -> Option<Request> {
    let request_line = read_line(reader)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let size_line = read_line(reader)?;
            let size_hex = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).ok()?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(reader)?.is_empty() {}
                break;
            }
            let mut chunk = vec![0u8; size];
            reader.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk);
            read_line(reader)?; // the CRLF after the chunk
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0u8; len];
        reader.read_exact(&mut body).ok()?;
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// One mail as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Mail {
    /// The `MAIL FROM` address, without the angle brackets.
    pub from: String,
    /// The `RCPT TO` addresses, without the angle brackets.
    pub to: Vec<String>,
    /// The message (headers and body) as sent after `DATA`, dot-unstuffed,
    /// without the final `.` line.
    pub data: String,
    /// The argument of `AUTH` (e.g. `PLAIN <base64>`), when the client
    /// authenticated.
    pub auth: Option<String>,
}

/// A minimal SMTP server on `127.0.0.1` without TLS, enough for `lettre`:
/// greeting, `EHLO`/`HELO`, `AUTH PLAIN` (any credentials accepted),
/// `MAIL FROM`, `RCPT TO`, `DATA`, `RSET`, `NOOP`, `QUIT`.
pub struct SmtpSink {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SmtpSink {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let store = mails.clone();
        let thread = serve(listener, stop.clone(), move |stream| {
            let _ = handle_smtp(stream, &store);
        });
        SmtpSink {
            addr,
            mails,
            stop,
            thread: Some(thread),
        }
    }

    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The mails received so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits until at least `n` mails arrived or `timeout` passed; returns
    /// those received (possibly fewer than `n`).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        wait_until(&self.mails, n, timeout)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        shutdown(self.addr, &self.stop, &mut self.thread);
    }
}

/// `<addr>` (possibly followed by parameters) → `addr`.
fn smtp_path(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_string(),
        _ => arg.split_whitespace().next().unwrap_or("").to_string(),
    }
}

fn handle_smtp(stream: TcpStream, mails: &Mutex<Vec<Mail>>) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    out.write_all(b"220 localhost SKOS test SMTP sink ready\r\n")?;

    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut auth: Option<String> = None;
    while let Some(line) = read_line(&mut reader) {
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        match verb.as_str() {
            "EHLO" => out.write_all(
                b"250-localhost greets you\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 SIZE 10485760\r\n",
            )?,
            "HELO" => out.write_all(b"250 localhost\r\n")?,
            "AUTH" => {
                if arg.to_ascii_uppercase().starts_with("PLAIN") && arg.trim().contains(' ') {
                    auth = Some(arg.trim().to_string());
                    out.write_all(b"235 2.7.0 Authentication successful\r\n")?;
                } else if arg.trim().eq_ignore_ascii_case("PLAIN") {
                    out.write_all(b"334 \r\n")?;
                    let Some(response) = read_line(&mut reader) else {
                        break;
                    };
                    auth = Some(format!("PLAIN {response}"));
                    out.write_all(b"235 2.7.0 Authentication successful\r\n")?;
                } else {
                    out.write_all(b"504 5.5.4 Unrecognized authentication type\r\n")?;
                }
            }
            "MAIL" => {
                let rest = arg.split_once(':').map(|x| x.1).unwrap_or("");
                from = Some(smtp_path(rest));
                to.clear();
                out.write_all(b"250 2.1.0 OK\r\n")?;
            }
            "RCPT" => {
                let rest = arg.split_once(':').map(|x| x.1).unwrap_or("");
                to.push(smtp_path(rest));
                out.write_all(b"250 2.1.5 OK\r\n")?;
            }
            "DATA" => {
                if from.is_none() || to.is_empty() {
                    out.write_all(b"503 5.5.1 Need MAIL and RCPT first\r\n")?;
                    continue;
                }
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let mut data = String::new();
                loop {
                    let mut raw = Vec::new();
                    if reader.read_until(b'\n', &mut raw)? == 0 {
                        return Ok(());
                    }
                    let text = String::from_utf8_lossy(&raw);
                    let bare = text.trim_end_matches(['\r', '\n']);
                    if bare == "." {
                        break;
                    }
                    let unstuffed = text.strip_prefix('.').unwrap_or(&text);
                    data.push_str(unstuffed);
                }
                mails.lock().unwrap().push(Mail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                    auth: auth.clone(),
                });
                out.write_all(b"250 2.0.0 OK queued\r\n")?;
            }
            "RSET" => {
                from = None;
                to.clear();
                out.write_all(b"250 2.0.0 OK\r\n")?;
            }
            "NOOP" => out.write_all(b"250 2.0.0 OK\r\n")?,
            "QUIT" => {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                break;
            }
            _ => out.write_all(b"502 5.5.2 Command not implemented\r\n")?,
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn http_sink_records_a_request() {
        let sink = HttpSink::with_status(201);
        let mut s = TcpStream::connect(sink.addr()).unwrap();
        s.write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nX-A: b\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
        let reqs = sink.wait_for(1, Duration::from_secs(5));
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/hook");
        assert_eq!(reqs[0].header("x-a"), Some("b"));
        assert_eq!(reqs[0].body, b"hello");
    }

    #[test]
    fn smtp_sink_records_a_mail() {
        let sink = SmtpSink::start();
        let s = TcpStream::connect(("127.0.0.1", sink.port())).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let expect = |r: &mut BufReader<TcpStream>, code: &str| loop {
            let line = read_line(r).unwrap();
            assert!(line.starts_with(code), "{line}");
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        };
        expect(&mut r, "220");
        for (cmd, code) in [
            ("EHLO me", "250"),
            ("MAIL FROM:<a@x>", "250"),
            ("RCPT TO:<b@y>", "250"),
            ("DATA", "354"),
            ("Subject: s\r\n\r\n..dot\r\n.", "250"),
            ("QUIT", "221"),
        ] {
            w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
            expect(&mut r, code);
        }
        let mails = sink.wait_for(1, Duration::from_secs(5));
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].from, "a@x");
        assert_eq!(mails[0].to, vec!["b@y".to_string()]);
        assert_eq!(mails[0].data, "Subject: s\r\n\r\n.dot\r\n");
    }
}
