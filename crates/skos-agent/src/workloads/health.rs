//! Health checks: an HTTP GET answered 2xx or 3xx (redirects not
//! followed), a TCP connection accepted, or a command that exits 0, each
//! within its timeout. A check says healthy or not, and why not.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use skos_core::config::{HealthCheck, HealthProbe};

/// A check's verdict: healthy, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy(String),
}

impl Health {
    pub fn ok(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Run `check` once, within its `timeout_seconds`.
pub fn check(check: &HealthCheck) -> Health {
    let timeout = Duration::from_secs_f64(check.timeout_seconds);
    match check.probe() {
        Some(HealthProbe::Http(url)) => http(url, timeout),
        Some(HealthProbe::Tcp(addr)) => tcp(addr, timeout),
        Some(HealthProbe::Command(argv)) => command(argv, timeout),
        None => Health::Unhealthy("no health check configured".into()),
    }
}

/// GET `url`: 2xx and 3xx are healthy. No proxy, no redirect followed.
pub fn http(url: &str, timeout: Duration) -> Health {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .proxy(None)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(resp) => {
            let code = resp.status().as_u16();
            if (200..400).contains(&code) {
                Health::Healthy
            } else {
                Health::Unhealthy(format!("GET {url} answered {code}"))
            }
        }
        Err(e) => Health::Unhealthy(format!("GET {url}: {e}")),
    }
}

/// Connect to `addr` (`host:port`): any of its addresses accepting within
/// the timeout is healthy.
pub fn tcp(addr: &str, timeout: Duration) -> Health {
    let until = Instant::now() + timeout;
    let addrs = match addr.to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return Health::Unhealthy(format!("{addr}: {e}")),
    };
    let mut last = format!("{addr}: no address");
    for a in addrs {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = format!("{addr}: no connection within {} s", timeout.as_secs_f64());
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(_) => return Health::Healthy,
            Err(e) => last = format!("connect {a}: {e}"),
        }
    }
    Health::Unhealthy(last)
}

/// Run `argv`: exit 0 within the timeout is healthy (killed past it).
pub fn command(argv: &[String], timeout: Duration) -> Health {
    match crate::mesh::exec::run(argv, timeout) {
        Ok(out) if out.success() => Health::Healthy,
        Ok(out) => Health::Unhealthy(out.describe()),
        Err(e) => Health::Unhealthy(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A server that answers one request with `status`.
    fn answer_once(status: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nLocation: /elsewhere\r\nConnection: close\r\n\r\n"
                );
            }
        });
        format!("http://{addr}/")
    }

    #[test]
    fn http_2xx_and_3xx_are_healthy_others_not() {
        let t = Duration::from_secs(5);
        assert_eq!(http(&answer_once("200 OK"), t), Health::Healthy);
        assert_eq!(http(&answer_once("302 Found"), t), Health::Healthy);
        let h = http(&answer_once("503 Service Unavailable"), t);
        assert!(
            matches!(&h, Health::Unhealthy(w) if w.contains("503")),
            "{h:?}"
        );
    }

    #[test]
    fn a_closed_port_is_unhealthy_by_http_and_tcp() {
        // Bound, then closed: nothing listens there now.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Duration::from_secs(2);
        assert!(!http(&format!("http://127.0.0.1:{port}/"), t).ok());
        let h = tcp(&format!("127.0.0.1:{port}"), t);
        assert!(
            matches!(&h, Health::Unhealthy(w) if w.contains("refused")),
            "{h:?}"
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(tcp(&l.local_addr().unwrap().to_string(), t).ok());
    }

    #[test]
    fn a_command_is_healthy_when_it_exits_0_in_time() {
        let t = Duration::from_secs(5);
        let argv = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(command(&argv(&["/bin/sh", "-c", "exit 0"]), t).ok());
        let h = command(&argv(&["/bin/sh", "-c", "exit 3"]), t);
        assert!(
            matches!(&h, Health::Unhealthy(w) if w.contains("exit status 3")),
            "{h:?}"
        );
        let h = command(
            &argv(&["/bin/sh", "-c", "sleep 30"]),
            Duration::from_millis(300),
        );
        assert!(
            matches!(&h, Health::Unhealthy(w) if w.contains("timeout")),
            "{h:?}"
        );
        assert!(!command(&argv(&["/nonexistent/check"]), t).ok());
    }
}
