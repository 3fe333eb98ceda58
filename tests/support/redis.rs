//! A real `redis-server` for the fleet tests, the fleet bench and the
//! fleet example: started on a free loopback port, with nothing saved to
//! disk, and killed when dropped. `.ci/run` installs the server where it
//! is missing.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    /// Settings beyond the defaults below.
    extra: Vec<String>,
    /// Whether the port speaks TLS only (`rediss://`).
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it accepts.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with more settings (`["--maxclients", "8"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::try_start_with(extra).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`RedisServer::start_with`], saying why it could not start rather
    /// than panicking.
    pub fn try_start_with(extra: &[&str]) -> Result<Self, String> {
        Self::try_start(extra, false)
    }

    /// A server whose port speaks TLS only, with `extra` naming its
    /// certificate and key (`--tls-cert-file`, `--tls-key-file`, ...).
    #[cfg_attr(not(feature = "redis-tls"), allow(dead_code))]
    pub fn start_tls(extra: &[&str]) -> Self {
        Self::try_start(extra, true).unwrap_or_else(|why| panic!("{why}"))
    }

    fn try_start(extra: &[&str], tls: bool) -> Result<Self, String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let mut server = Self {
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (as a crash would: no shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open and answer
    /// nothing, as across a network partition.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch().unwrap_or_else(|why| panic!("{why}"));
    }

    fn launch(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls {
            &["--port", "0", "--tls-port", &port]
        } else {
            &["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(ports)
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}): it must be on the PATH \
                     (`apt-get install redis-server`; .ci/run installs it)"
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server did not listen on port {} within 10 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused server too.
        self.kill();
    }
}
