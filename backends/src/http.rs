//! The HTTP client of every object store.
//!
//! `https://` requests go through object_store's reqwest client, built on the
//! first such request. Plain `http://` requests (a local S3 server, azurite,
//! an emulator) go through hyper directly, for two reasons that cost a lazy
//! restore most of its time to first instruction:
//! - reqwest loads the system's TLS roots (~30 ms, 145 certificates) when the
//!   client is built, even when no request will ever use TLS;
//! - a server that does not set TCP_NODELAY (s3s-fs) sends the rest of a
//!   response only once its first segment is acknowledged, and Linux delays
//!   that acknowledgement by 40 ms on a connection reused for a new request
//!   ("ping-pong" mode). The plain client acknowledges each read at once
//!   (TCP_QUICKACK), so every request after the first no longer waits 40 ms.
//!
//! With a proxy configured in the environment, everything goes through
//! reqwest, which knows how to use it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest,
    HttpRequestBody, HttpResponse, HttpResponseBody, HttpService, ReqwestConnector,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// object_store's defaults, which the plain client keeps.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Plain HTTP through hyper, HTTPS through reqwest (see the module comment).
#[derive(Debug, Default)]
pub(crate) struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        if proxy_in_env() {
            return ReqwestConnector::default().connect(options);
        }
        let mut tcp = TcpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let plain = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(QuickAckConnector(tcp));
        Ok(HttpClient::new(Service {
            plain,
            options: options.clone(),
            tls: OnceLock::new(),
        }))
    }
}

fn proxy_in_env() -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

#[derive(Debug)]
struct Service {
    plain: Client<QuickAckConnector, HttpRequestBody>,
    options: ClientOptions,
    /// reqwest's client for `https://`, or why it could not be built.
    tls: OnceLock<Result<HttpClient, String>>,
}

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        if req.uri().scheme_str() != Some("http") {
            let tls = self.tls.get_or_init(|| {
                ReqwestConnector::default()
                    .connect(&self.options)
                    .map_err(|e| e.to_string())
            });
            return match tls {
                Ok(client) => client.execute(req).await,
                Err(e) => Err(HttpError::new(
                    HttpErrorKind::Connect,
                    io::Error::other(e.clone()),
                )),
            };
        }
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, self.plain.request(req))
            .await
            .map_err(|e| HttpError::new(HttpErrorKind::Timeout, e))?
            .map_err(|e| {
                let kind = if e.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Request
                };
                HttpError::new(kind, e)
            })?;
        Ok(response.map(|body| {
            HttpResponseBody::new(body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e)))
        }))
    }
}

/// TCP connections that acknowledge what they read at once.
#[derive(Debug, Clone)]
struct QuickAckConnector(TcpConnector);

impl tower_service::Service<http::Uri> for QuickAckConnector {
    type Response = TokioIo<QuickAckStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            Ok(TokioIo::new(QuickAckStream(stream)))
        })
    }
}

#[derive(Debug)]
struct QuickAckStream(TcpStream);

impl Connection for QuickAckStream {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}

impl AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        if buf.filled().len() > before {
            // Sends the pending acknowledgement now rather than in 40 ms;
            // a failure only costs the delay.
            let _ = rustix::net::sockopt::set_tcp_quickack(&self.0, true);
        }
        polled
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
