//! Local S3 servers for the benchmarks.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A local S3 server (moto, or s3s-fs: much faster, closer to what a real
/// object store gives) on a free port, with one bucket; stopped (by PID)
/// when dropped.
pub struct S3 {
    pub name: String,
    child: Child,
    port: u16,
    pub bucket: String,
    /// s3s-fs: the directory holding its buckets (an object is a file).
    pub root: Option<PathBuf>,
}

impl S3 {
    pub fn start(name: &str, tmp: &Path, bucket: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = match name {
            "moto" => {
                let mut c = Command::new("moto_server");
                c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                c
            }
            "s3s-fs" => {
                let root = tmp.join("s3s-root");
                std::fs::create_dir_all(&root).unwrap();
                let mut c = Command::new("s3s-fs");
                c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", "test", "--secret-key", "test"])
                    .arg(&root);
                c
            }
            other => panic!("unknown S3 server {other}"),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let s3 = S3 {
            name: name.to_string(),
            child,
            port,
            bucket: bucket.into(),
            root: (name == "s3s-fs").then(|| tmp.join("s3s-root")),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name} did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if name == "s3s-fs" {
            // s3s-fs keeps a bucket as a directory of its root.
            std::fs::create_dir_all(tmp.join("s3s-root").join(&s3.bucket)).unwrap();
            return s3;
        }
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(c, "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", s3.bucket).unwrap();
        let mut reply = String::new();
        let _ = c.read_to_string(&mut reply);
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "creating the bucket: {reply}"
        );
        s3
    }

    pub fn env(&self) -> Vec<(String, String)> {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
