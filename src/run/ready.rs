//! When a service started by `crstream run` is ready: `--ready-when`.

use anyhow::{Context, Result, bail};
use regex::Regex;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Ready {
    /// Accepts a TCP connection.
    Tcp { host: String, port: u16 },
    /// The file exists.
    File(PathBuf),
    /// A line of the service's stdout or stderr matches.
    Log(Regex),
    /// The command (run by sh -c) exits 0.
    Exec(String),
}

impl std::str::FromStr for Ready {
    type Err = String;

    fn from_str(v: &str) -> Result<Self, String> {
        let (kind, rest) = v.split_once(':').ok_or_else(|| {
            format!("{v:?}: expected tcp:[HOST:]PORT, file:PATH, log:REGEX or exec:COMMAND")
        })?;
        match kind {
            "tcp" => {
                let (host, port) = match rest.rsplit_once(':') {
                    Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p),
                    None => ("127.0.0.1".to_string(), rest),
                };
                let port = port
                    .parse()
                    .map_err(|_| format!("{v:?}: {port:?} is not a port"))?;
                Ok(Self::Tcp { host, port })
            }
            "file" if !rest.is_empty() => Ok(Self::File(PathBuf::from(rest))),
            "log" => Regex::new(rest)
                .map(Self::Log)
                .map_err(|e| format!("{v:?}: {e}")),
            "exec" if !rest.is_empty() => Ok(Self::Exec(rest.to_string())),
            _ => Err(format!(
                "{v:?}: expected tcp:[HOST:]PORT, file:PATH, log:REGEX or exec:COMMAND"
            )),
        }
    }
}

impl Ready {
    /// Whether the condition holds now; `logged`: a line of the output
    /// matched (kept by the output follower).
    pub fn holds(&self, logged: bool) -> bool {
        match self {
            Self::Tcp { host, port } => {
                use std::net::ToSocketAddrs;
                (host.as_str(), *port).to_socket_addrs().is_ok_and(|addrs| {
                    addrs.into_iter().any(|a| {
                        std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
                    })
                })
            }
            Self::File(p) => p.exists(),
            Self::Log(_) => logged,
            Self::Exec(cmd) => std::process::Command::new("sh")
                .args(["-c", cmd])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }

    pub fn regex(&self) -> Option<&Regex> {
        match self {
            Self::Log(r) => Some(r),
            _ => None,
        }
    }
}

/// Waits until `ready` holds, checking every 20 ms, while `alive` says the
/// service runs; errors once it exited or after `timeout`.
pub fn wait(
    ready: &Ready,
    timeout: Duration,
    logged: impl Fn() -> bool,
    mut alive: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let t0 = std::time::Instant::now();
    loop {
        if ready.holds(logged()) {
            return Ok(t0.elapsed());
        }
        if !alive().context("watching the service")? {
            bail!("the service exited before it was ready");
        }
        if t0.elapsed() > timeout {
            bail!(
                "the service was not ready after {:.1} s (--ready-when)",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse() {
        assert!(matches!(
            "tcp:8080".parse(),
            Ok(Ready::Tcp { port: 8080, .. })
        ));
        match "tcp:localhost:99".parse::<Ready>() {
            Ok(Ready::Tcp { host, port }) => assert_eq!((host.as_str(), port), ("localhost", 99)),
            other => panic!("{other:?}"),
        }
        assert!(matches!("file:/tmp/x".parse(), Ok(Ready::File(_))));
        assert!(matches!("log:^ready .*$".parse(), Ok(Ready::Log(_))));
        assert!(matches!("exec:true".parse(), Ok(Ready::Exec(_))));
        for bad in ["tcp:x", "nope:1", "log:(", "file:", "8080"] {
            assert!(bad.parse::<Ready>().is_err(), "{bad}");
        }
    }
}
