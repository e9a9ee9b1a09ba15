//! A real `redis-server` for the fleet tests: started on loopback on a free port in a
//! temporary directory (`--save '' --appendonly no`: nothing persists), ready once it
//! answers `PING`, killed when dropped. Where `redis-server` is not installed the tests
//! fail, as the Vulkan tests do without a device, unless `PHOTOFINISH_REQUIRE_REDIS=0`
//! skips them knowingly (they then say so and return).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// The `redis-server` binary, if installed.
fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// Starts a server, or `None` after printing why the test is skipped (only when
/// `redis-server` is missing and `PHOTOFINISH_REQUIRE_REDIS=0`).
pub fn start() -> Option<RedisServer> {
    start_with(&[])
}

/// As [`start`], with extra `redis-server` arguments (e.g. `--requirepass x`).
pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
    if binary().is_none() {
        if std::env::var("PHOTOFINISH_REQUIRE_REDIS").as_deref() != Ok("0") {
            panic!(
                "redis-server is not installed: install the Debian package `redis-server` \
                 (scripts/test does), or set PHOTOFINISH_REQUIRE_REDIS=0 to skip the fleet \
                 tests knowingly"
            );
        }
        eprintln!(
            "SKIPPED: redis-server is not installed (Debian package `redis-server`) and \
             PHOTOFINISH_REQUIRE_REDIS=0"
        );
        return None;
    }
    let port = free_port();
    let mut server = RedisServer {
        child: None,
        port,
        dir: tempfile::tempdir().expect("temporary directory"),
        extra: extra.iter().map(|s| (*s).to_owned()).collect(),
    };
    server.restart();
    Some(server)
}

/// A port nothing listens on now (the OS's pick for an ephemeral bind).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local address").port()
}

impl RedisServer {
    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory the server runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port, empty, and waits for `PING`.
    pub fn restart(&mut self) {
        self.stop();
        let binary = binary().expect("redis-server installed");
        let mut cmd = Command::new(binary);
        cmd.current_dir(self.dir.path())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let auth = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1).cloned());
        while Instant::now() < deadline {
            if self.ping(auth.as_deref()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// True when the server answers `PING` with `PONG` (after `AUTH password`).
    fn ping(&self, password: Option<&str>) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut packed = password.map_or_else(Vec::new, |pw| pack(&["AUTH", pw]));
        packed.extend(pack(&["PING"]));
        if s.write_all(&packed).is_err() {
            return false;
        }
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        for _ in 0..2 {
            line.clear();
            if reader.read_line(&mut line).is_err() {
                return false;
            }
            if line.starts_with("+PONG") {
                return true;
            }
        }
        false
    }

    /// Runs one command given as arguments (binary-safe, RESP), without waiting for a
    /// reply: e.g. `DEBUG SLEEP 2`, which holds the server while the test goes on.
    pub fn send_detached(&self, args: &[&str]) -> std::thread::JoinHandle<()> {
        let port = self.port;
        let packed = pack(args);
        std::thread::spawn(move || {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(&packed);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut line = String::new();
                let _ = BufReader::new(s).read_line(&mut line);
            }
        })
    }

    /// Runs one command (RESP) and returns the first reply line.
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect redis-server");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(&pack(args)).expect("send");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("reply");
        line.trim_end().to_owned()
    }
}

/// Polls `f` until it holds or `limit` passes (the fleet's copies follow Redis a
/// moment later).
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// RESP encoding of one command.
fn pack(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
