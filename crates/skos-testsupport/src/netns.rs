//! Real WireGuard tunnels between network namespaces, for the mesh tests.
//!
//! [`Netns`] is a named network namespace (`ip netns add`), deleted on drop
//! after every process in it is killed. [`WgPair`] builds two of them,
//! joined by a primary veth pair (and optionally a backup one), each with a
//! userspace WireGuard interface (`wireguard-go`, through `wg-quick`)
//! whose names are unique on the machine: wireguard-go's control sockets
//! live in the shared `/var/run/wireguard`. Dropping a [`WgPair`] kills its
//! wireguard-go processes (wherever they ended up), removes their sockets
//! and deletes the namespaces, also when the test failed.
//!
//! Everything needs root, `ip` (iproute2), `wg`, `wg-quick` and
//! `wireguard-go`; [`unavailable`] says what is missing so a test can say
//! why it skips.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
                .any(|d| d.join(program).is_file())
        })
        .unwrap_or(false)
}

/// Why real tunnels cannot be built here, or `None` when they can
/// (checked once per process).
pub fn unavailable() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(check).clone()
}

fn check() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces need it)".into());
    }
    for p in ["ip", "wg", "wg-quick", "wireguard-go"] {
        if !which(p) {
            return Some(format!("{p} is not installed (./test.sh installs it)"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (wireguard-go needs it)".into());
    }
    let probe = format!("skos-probe-{}", unique(""));
    let out = run(&["ip", "netns", "add", &probe]);
    if !out.status.success() {
        return Some(format!(
            "ip netns add fails: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    run(&["ip", "netns", "del", &probe]);
    None
}

fn run(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .env_remove("LOG_LEVEL")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", argv[0]))
}

/// Run `argv`; panic with its stderr when it fails.
pub fn must(argv: &[&str]) -> String {
    let out = run(argv);
    assert!(
        out.status.success(),
        "{} failed ({}): {}{}",
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A short name unique on this machine: `<prefix><pid in base 36>x<n>`
/// (interface names have at most 15 characters).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let mut pid = std::process::id();
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit(pid % 36, 36).unwrap_or('0'));
        pid /= 36;
        if pid == 0 {
            break;
        }
    }
    let pid: String = digits.into_iter().rev().collect();
    format!("{prefix}{pid}x{n}")
}

/// A network namespace, deleted (with every process in it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("skos-{}-{tag}", unique(""));
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        must(&a)
    }

    /// `ip netns exec <ns> <argv>`: a command to run inside.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run `argv` inside; its output, whatever its status.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..])
            .env_remove("LOG_LEVEL")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} in {}: {e}", argv[0], self.name))
    }

    /// Run `f` on a thread that has entered this namespace: sockets it
    /// opens and programs it starts live there.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns(2) on a valid namespace fd; it changes only
                // this (scoped, short-lived) thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Join this namespace to the host's with a veth pair: `eth0` inside
    /// with `<prefix>.2/30`, a uniquely named interface on the host with
    /// `<prefix>.1/30` (`prefix`: the first three octets, `10.40.1`).
    /// Returns the host's address, which processes inside reach the host
    /// at. The pair goes with the namespace.
    pub fn link_to_host(&self, prefix: &str) -> String {
        let host_if = unique("skh");
        let host_ip = format!("{prefix}.1");
        must(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
            &self.name,
        ]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        must(&["ip", "link", "set", &host_if, "up"]);
        self.ip(&["addr", "add", &format!("{prefix}.2/30"), "dev", "eth0"]);
        self.ip(&["link", "set", "eth0", "up"]);
        host_ip
    }

    /// The ids of the processes in this namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = run(&["ip", "netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            kill(pid);
        }
        run(&["ip", "netns", "del", &self.name]);
    }
}

fn kill(pid: u32) {
    if let Ok(p) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) of a process this test started (found through its
        // namespace or its interface name).
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
    }
}

/// The second octet of a `10.X.0.0/16` in which no interface here has an
/// address: a test (its own process, run beside others) links its
/// namespaces in one of its own ([`Netns::link_to_host`]). Starts from the
/// process id, so tests running at once rarely even try the same one.
pub fn free_subnet() -> u32 {
    let used = must(&["ip", "-o", "-4", "addr", "show"]);
    let start = std::process::id() % 200;
    (0..200)
        .map(|i| 40 + (start + i) % 200)
        .find(|x| !used.contains(&format!(" 10.{x}.")))
        .expect("a free 10.X.0.0/16 for the test's links")
}

/// Join two namespaces with a veth pair: `a_if` (with `a_cidr`) in `a`,
/// `b_if` (with `b_cidr`) in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, a_cidr: &str, b: &Netns, b_if: &str, b_cidr: &str) {
    must(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    a.ip(&["addr", "add", a_cidr, "dev", a_if]);
    b.ip(&["addr", "add", b_cidr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// The processes running `wireguard-go <ifname>`, found through /proc.
pub fn wireguard_pids(ifname: &str) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
            args.len() >= 2
                && args[0].ends_with(b"wireguard-go")
                && args.last().is_some_and(|a| *a == ifname.as_bytes())
        })
        .collect()
}

/// SIGKILL the wireguard-go of `ifname` (what a crash looks like). Returns
/// how many processes were killed.
pub fn kill_wireguard(ifname: &str) -> usize {
    let pids = wireguard_pids(ifname);
    for p in &pids {
        kill(*p);
    }
    pids.len()
}

/// A WireGuard key pair made by `wg genkey` / `wg pubkey`.
#[derive(Clone)]
pub struct WgKeys {
    pub private: String,
    pub public: String,
}

impl WgKeys {
    pub fn generate() -> WgKeys {
        let private = must(&["wg", "genkey"]).trim().to_string();
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("wg pubkey");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(private.as_bytes())
            .expect("write key");
        let out = child.wait_with_output().expect("wg pubkey");
        let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
        WgKeys { private, public }
    }
}

/// Latest handshake (Unix seconds) of the only peer of `ifname`, as
/// `wg show <if> dump` says from inside `ns`; `None` when never or when it
/// cannot be read.
pub fn latest_handshake(ns: &Netns, ifname: &str) -> Option<i64> {
    let out = ns.exec(&["wg", "show", ifname, "dump"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let peer = text.lines().nth(1)?;
    let h: i64 = peer.split('\t').nth(4)?.parse().ok()?;
    (h > 0).then_some(h)
}

/// Serve one TCP echo on `addr` inside `server`, connect from inside
/// `client` and check the bytes come back: traffic flows.
pub fn tcp_roundtrip(
    client: &Netns,
    server: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let listener =
        server.run_in(|| TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}")))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    std::thread::scope(|s| {
        let served = s.spawn(|| loop {
            match listener.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(timeout));
                    let mut buf = [0u8; 4];
                    if c.read_exact(&mut buf).is_ok() {
                        let _ = c.write_all(&buf);
                    }
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return,
            }
        });
        let r = client.run_in(|| {
            let mut c = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| format!("connect {addr}: {e}"))?;
            c.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            c.write_all(b"skos").map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
            if &buf == b"skos" {
                Ok(())
            } else {
                Err("wrong echo".to_string())
            }
        });
        let _ = served.join();
        r
    })
}

/// Two namespaces `a` and `b` joined by a primary veth pair (and an
/// optional backup one), a WireGuard interface in each, brought up by
/// wg-quick from files in `dir`.
///
/// Addresses: primary path 10.200.1.1 (`a`, dev `pa`) – 10.200.1.2 (`b`,
/// dev `pb`); backup path 10.200.2.1 (`ba`) – 10.200.2.2 (`bb`); `b`'s
/// WireGuard endpoint 10.201.0.2:51820 sits on its loopback and `a` routes
/// it via the primary path. Tunnel addresses 10.99.0.1 (`a`) and 10.99.0.2
/// (`b`). `a` knows `b`'s endpoint; `b` learns `a`'s from its handshakes.
/// Both keep the tunnel alive every second.
pub struct WgPair {
    // Field order is drop order: processes first, then the namespaces.
    _guard: WgGuard,
    pub a: Netns,
    pub b: Netns,
    pub if_a: String,
    pub if_b: String,
    pub keys_a: WgKeys,
    pub keys_b: WgKeys,
    pub dir: TempDir,
    pub backup: bool,
}

/// Kills the wireguard-go of each named interface and removes its socket.
struct WgGuard(Vec<String>);

impl Drop for WgGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            kill_wireguard(name);
            let _ = fs::remove_file(format!("/var/run/wireguard/{name}.sock"));
        }
    }
}

pub const TUNNEL_A: &str = "10.99.0.1";
pub const TUNNEL_B: &str = "10.99.0.2";
pub const ENDPOINT_B: &str = "10.201.0.2";
pub const PRIMARY_GW: &str = "10.200.1.2";
pub const BACKUP_GW: &str = "10.200.2.2";

impl WgPair {
    pub fn new(backup: bool) -> WgPair {
        let base = unique("wgt");
        let (if_a, if_b) = (format!("{base}a"), format!("{base}b"));
        let guard = WgGuard(vec![if_a.clone(), if_b.clone()]);
        let a = Netns::new("a");
        let b = Netns::new("b");
        veth(&a, "pa", "10.200.1.1/24", &b, "pb", "10.200.1.2/24");
        if backup {
            veth(&a, "ba", "10.200.2.1/24", &b, "bb", "10.200.2.2/24");
        }
        b.ip(&["addr", "add", &format!("{ENDPOINT_B}/32"), "dev", "lo"]);
        a.ip(&[
            "route",
            "add",
            &format!("{ENDPOINT_B}/32"),
            "via",
            PRIMARY_GW,
            "dev",
            "pa",
        ]);
        let dir = tempfile::Builder::new()
            .prefix("skos-wg-")
            .tempdir()
            .expect("temp dir");
        let _ = fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700));
        let pair = WgPair {
            _guard: guard,
            a,
            b,
            if_a,
            if_b,
            keys_a: WgKeys::generate(),
            keys_b: WgKeys::generate(),
            dir,
            backup,
        };
        write_secret(&pair.key_file_a(), &pair.keys_a.private);
        write_secret(&pair.conf_a(), &pair.config_a());
        write_secret(
            &pair.conf_b(),
            &format!(
                "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = {TUNNEL_B}/24\n\n\
[Peer]\nPublicKey = {}\nAllowedIPs = {TUNNEL_A}/32\nPersistentKeepalive = 1\n",
                pair.keys_b.private, pair.keys_a.public
            ),
        );
        pair
    }

    /// The `mesh:` section of a SKOS config whose node sits in `a`: it
    /// watches `a`'s interface and peer `hermes` (b's tunnel address), with
    /// short timings (stale after 3 s, probes of 0.5 s). `failover` is the
    /// peer's `failover:` block (indented six spaces) or empty.
    pub fn mesh_section(&self, failover: &str) -> String {
        self.mesh_section_probing("{count: 2, interval: 0.05, timeout: 0.5}", failover)
    }

    /// [`WgPair::mesh_section`] with `mesh.probe` as given (a YAML flow
    /// mapping: `{count: 2, timeout: 0.2}`).
    pub fn mesh_section_probing(&self, probe: &str, failover: &str) -> String {
        format!(
            "mesh:
  stale_after: 3
  settle_seconds: 1
  reconnect_attempts: 2
  reconnect_delay_seconds: 0.3
  command_timeout: 10
  probe: {probe}
  interfaces:
    - name: {if_a}
      config_path: {conf}
      private_key_file: {key}
      address: [10.99.0.1/24]
      listen_port: 51820
  peers:
    - name: hermes
      interface: {if_a}
      public_key: '{pub_b}'
      endpoint: {ENDPOINT_B}:51820
      allowed_ips: [{TUNNEL_B}/32]
      persistent_keepalive: 1
      address: {TUNNEL_B}
{failover}",
            if_a = self.if_a,
            conf = self.conf_a().display(),
            key = self.key_file_a().display(),
            pub_b = self.keys_b.public,
        )
    }

    /// `a`'s wg-quick file as it should be.
    pub fn config_a(&self) -> String {
        format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = {TUNNEL_A}/24\n\n\
[Peer]\nPublicKey = {}\nEndpoint = {ENDPOINT_B}:51820\nAllowedIPs = {TUNNEL_B}/32\nPersistentKeepalive = 1\n",
            self.keys_a.private, self.keys_b.public
        )
    }

    pub fn conf_a(&self) -> PathBuf {
        self.dir.path().join(format!("{}.conf", self.if_a))
    }

    pub fn conf_b(&self) -> PathBuf {
        self.dir.path().join(format!("{}.conf", self.if_b))
    }

    pub fn key_file_a(&self) -> PathBuf {
        self.dir.path().join("a.key")
    }

    /// `wg-quick up` both sides (b first, so a's first handshake lands) and
    /// wait for a handshake.
    pub fn up(&self) {
        for (ns, conf) in [(&self.b, self.conf_b()), (&self.a, self.conf_a())] {
            let out = ns.exec(&["wg-quick", "up", &conf.display().to_string()]);
            assert!(
                out.status.success(),
                "wg-quick up {} in {}: {}",
                conf.display(),
                ns.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.wait_handshake_after(0, Duration::from_secs(15));
    }

    /// Wait until `a` has a handshake newer than `after` (Unix seconds).
    pub fn wait_handshake_after(&self, after: i64, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(h) = latest_handshake(&self.a, &self.if_a).filter(|h| *h > after) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "no handshake on {} after {after} within {timeout:?}",
                self.if_a
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Traffic through the tunnel, a to b.
    pub fn traffic_flows(&self, timeout: Duration) -> Result<(), String> {
        let addr: SocketAddr = format!("{TUNNEL_B}:7777")
            .parse()
            .map_err(|e| format!("{e}"))?;
        tcp_roundtrip(&self.a, &self.b, addr, timeout)
    }

    /// Where `a` routes `b`'s endpoint: (gateway, dev).
    pub fn endpoint_route(&self) -> (String, String) {
        let out = self
            .a
            .ip(&["-4", "route", "show", "exact", &format!("{ENDPOINT_B}/32")]);
        let words: Vec<&str> = out.split_whitespace().collect();
        let after = |k: &str| {
            words
                .iter()
                .position(|w| *w == k)
                .and_then(|i| words.get(i + 1))
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        (after("via"), after("dev"))
    }
}

fn write_secret(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let _ = f.set_permissions(fs::Permissions::from_mode(0o600));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
