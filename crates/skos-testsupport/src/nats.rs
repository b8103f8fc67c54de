//! A real `nats-server` for one test, the way nats.rs tests do it: started
//! on a random port (`-p -1`) with JetStream in a temp dir, its port read
//! from its log, killed on drop. It can be killed and restarted on the same
//! port and store, so tests can take the bus away and give it back.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
    /// The address it listens on (`127.0.0.1`, or every address).
    listen: &'static str,
}

/// Why no server could be started: `nats-server` missing is the usual one.
pub fn nats_server_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let p = Path::new(dir).join("nats-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err("nats-server not found on PATH (the test script installs Debian's nats-server)".into())
}

impl NatsServer {
    /// Start a JetStream-enabled server on a random loopback port.
    pub fn start() -> NatsServer {
        Self::start_with_config(None)
    }

    /// Start one that listens on every address (random port), for agents
    /// in other network namespaces reaching it over veth links.
    pub fn start_on_every_address() -> NatsServer {
        Self::start_listening(None, "0.0.0.0")
    }

    /// Start with an extra server config file (auth, permissions, TLS).
    pub fn start_with_config(config: Option<PathBuf>) -> NatsServer {
        Self::start_listening(config, "127.0.0.1")
    }

    fn start_listening(config: Option<PathBuf>, listen: &'static str) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let mut s = NatsServer {
            child: None,
            port: 0,
            store,
            config,
            listen,
        };
        s.spawn(None);
        s
    }

    fn spawn(&mut self, port: Option<u16>) {
        let bin = nats_server_binary().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(bin);
        cmd.arg("-a")
            .arg(self.listen)
            .arg("-p")
            .arg(port.map(|p| p.to_string()).unwrap_or_else(|| "-1".into()))
            .arg("-js")
            .arg("-sd")
            .arg(self.store.path());
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                        if let Some(port) = rest
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.trim().parse::<u16>().ok())
                        {
                            let _ = tx.send(port);
                            sent = true;
                        }
                    }
                }
                if std::env::var_os("SKOS_TEST_NATS_LOG").is_some() {
                    eprintln!("[nats-server] {line}");
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("nats-server did not report its port within 20 s");
        self.port = port;
        self.child = Some(child);
        // Wait until it accepts connections and JetStream is ready.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server not accepting on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Kill the server (SIGKILL); the store is kept.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        // The port can take a moment to become free again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(Some(port));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
