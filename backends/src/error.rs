//! Backend errors: one readable line each, always naming the URL.

use std::error::Error as StdError;
use std::io;

use object_store::client::{HttpError, HttpErrorKind};

/// What went wrong with a location. Every variant carries the URL as the user
/// wrote it, and `Display` is a single line such as `s3://b/k: not found`.
///
/// Causes from the storage client are kept as short strings rather than as
/// `source()` so that error chains printed by the binary stay one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The URL has a scheme this crate does not handle.
    #[error(
        "unsupported URL scheme \"{scheme}\" in {url} (expected -, a path, file://, s3://, gs://, az://, memory://)"
    )]
    UnsupportedScheme { url: String, scheme: String },
    /// The URL is malformed (missing bucket, empty key, ...).
    #[error("{url}: invalid location ({reason})")]
    InvalidUrl { url: String, reason: String },
    /// The store could not be configured from the environment.
    #[error("{url}: invalid configuration ({reason})")]
    Config { url: String, reason: String },
    /// The object (or file) does not exist.
    #[error("{url}: not found")]
    NotFound { url: String },
    /// The bucket or container does not exist.
    #[error("{url}: no such bucket")]
    NoSuchBucket { url: String },
    /// The credentials are valid but not allowed to do this.
    #[error("{url}: permission denied ({cause})")]
    PermissionDenied { url: String, cause: String },
    /// The server rejected the credentials (unknown key, bad signature, expired token).
    #[error("{url}: authentication failed ({cause})")]
    Unauthenticated { url: String, cause: String },
    /// No credentials were configured and none could be obtained from the
    /// platform (instance metadata and the like).
    #[error("{url}: no credentials ({hint})")]
    NoCredentials { url: String, hint: String },
    /// Nothing listens at the endpoint.
    #[error("{url}: connection refused ({endpoint})")]
    ConnectionRefused { url: String, endpoint: String },
    /// Any other failure to reach the server (DNS, TLS, reset, ...).
    #[error("{url}: cannot connect ({cause})")]
    Connect { url: String, cause: String },
    /// The server did not answer in time.
    #[error("{url}: timed out ({cause})")]
    TimedOut { url: String, cause: String },
    /// A ranged read outside the object.
    #[error("{url}: invalid range {start}..{end} (object size {size})")]
    InvalidRange {
        url: String,
        start: u64,
        end: u64,
        size: u64,
    },
    /// The store returned fewer bytes than asked for.
    #[error("{url}: short read at offset {offset}: expected {expected} bytes, got {got}")]
    ShortRead {
        url: String,
        offset: u64,
        expected: u64,
        got: u64,
    },
    /// The object was replaced while it was being read.
    #[error("{url}: object changed while being read")]
    Changed { url: String },
    /// Anything else, with the storage client's message in short form.
    #[error("{url}: {cause}")]
    Other { url: String, cause: String },
}

impl BackendError {
    /// The URL the error is about.
    pub fn url(&self) -> &str {
        match self {
            Self::UnsupportedScheme { url, .. }
            | Self::InvalidUrl { url, .. }
            | Self::Config { url, .. }
            | Self::NotFound { url }
            | Self::NoSuchBucket { url }
            | Self::PermissionDenied { url, .. }
            | Self::Unauthenticated { url, .. }
            | Self::NoCredentials { url, .. }
            | Self::ConnectionRefused { url, .. }
            | Self::Connect { url, .. }
            | Self::TimedOut { url, .. }
            | Self::InvalidRange { url, .. }
            | Self::ShortRead { url, .. }
            | Self::Changed { url }
            | Self::Other { url, .. } => url,
        }
    }

    /// The closest `std::io::ErrorKind`.
    pub fn io_kind(&self) -> io::ErrorKind {
        use io::ErrorKind as K;
        match self {
            Self::NotFound { .. } | Self::NoSuchBucket { .. } => K::NotFound,
            Self::PermissionDenied { .. }
            | Self::Unauthenticated { .. }
            | Self::NoCredentials { .. } => K::PermissionDenied,
            Self::ConnectionRefused { .. } => K::ConnectionRefused,
            Self::Connect { .. } => K::NotConnected,
            Self::TimedOut { .. } => K::TimedOut,
            Self::UnsupportedScheme { .. }
            | Self::InvalidUrl { .. }
            | Self::Config { .. }
            | Self::InvalidRange { .. } => K::InvalidInput,
            Self::ShortRead { .. } => K::UnexpectedEof,
            Self::Changed { .. } | Self::Other { .. } => K::Other,
        }
    }
}

/// The `io::Error` message is the `BackendError` line; the original error is
/// reachable with `io::Error::get_ref()` + downcast.
impl From<BackendError> for io::Error {
    fn from(e: BackendError) -> Self {
        io::Error::new(e.io_kind(), e)
    }
}

/// What the classifier needs to know about a location beyond the error itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct Diag {
    /// The URL as the user wrote it.
    pub url: String,
    /// The service endpoint, shown for connection failures.
    pub endpoint: Option<String>,
    /// Set when the store will look for credentials on the platform (instance
    /// metadata, ...): failures to reach those endpoints mean "no credentials".
    pub implicit_credentials: bool,
    /// Substrings of the credential endpoints' URLs.
    pub credential_markers: Vec<String>,
    /// What to set to provide credentials.
    pub credential_hint: &'static str,
}

impl Diag {
    pub(crate) fn local(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..Self::default()
        }
    }

    /// Turns an `object_store` error into a `BackendError` for this location.
    /// A local file operation's error, classified like a store's.
    pub(crate) fn classify_io(&self, what: &str, err: &io::Error) -> BackendError {
        let url = self.url.clone();
        match err.kind() {
            io::ErrorKind::NotFound => BackendError::NotFound { url },
            io::ErrorKind::PermissionDenied => BackendError::PermissionDenied {
                url,
                cause: format!("{what}: {err}"),
            },
            _ => BackendError::Other {
                url,
                cause: format!("{what}: {err}"),
            },
        }
    }

    pub(crate) fn classify(&self, err: &object_store::Error) -> BackendError {
        let url = self.url.clone();
        let chain: Vec<&(dyn StdError + 'static)> =
            std::iter::successors(Some(err as &(dyn StdError + 'static)), |e| (*e).source())
                .collect();
        let response = http_response(&chain);
        let code = response.as_ref().and_then(|r| xml_tag(&r.body, "Code"));
        let io_kind = chain
            .iter()
            .find_map(|e| e.downcast_ref::<io::Error>().map(io::Error::kind));
        let http_kind = chain
            .iter()
            .find_map(|e| e.downcast_ref::<HttpError>().map(HttpError::kind));
        let os_errs: Vec<&object_store::Error> = chain
            .iter()
            .filter_map(|e| e.downcast_ref::<object_store::Error>())
            .collect();
        let any_os = |f: fn(&object_store::Error) -> bool| os_errs.iter().any(|e| f(e));
        let cause = short_cause(&chain, response.as_ref());

        // A failure while fetching platform credentials is reported as such, not
        // as a failure of the storage service itself.
        if self.implicit_credentials {
            let text: String = chain.iter().map(|e| e.to_string()).collect();
            if self
                .credential_markers
                .iter()
                .any(|m| text.contains(m.as_str()))
            {
                return BackendError::NoCredentials {
                    url,
                    hint: format!("{}; {cause}", self.credential_hint),
                };
            }
        }
        match code {
            Some("NoSuchBucket" | "ContainerNotFound") => {
                return BackendError::NoSuchBucket { url };
            }
            Some(
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"
                | "AuthenticationFailed"
                | "InvalidAuthenticationInfo",
            ) => return BackendError::Unauthenticated { url, cause },
            _ => {}
        }
        if any_os(|e| matches!(e, object_store::Error::NotFound { .. }))
            || io_kind == Some(io::ErrorKind::NotFound)
        {
            return BackendError::NotFound { url };
        }
        if any_os(|e| matches!(e, object_store::Error::Unauthenticated { .. })) {
            return BackendError::Unauthenticated { url, cause };
        }
        if any_os(|e| matches!(e, object_store::Error::PermissionDenied { .. }))
            || io_kind == Some(io::ErrorKind::PermissionDenied)
        {
            return BackendError::PermissionDenied { url, cause };
        }
        if any_os(|e| matches!(e, object_store::Error::Precondition { .. })) {
            return BackendError::Changed { url };
        }
        if response.is_none() {
            if io_kind == Some(io::ErrorKind::ConnectionRefused) {
                let endpoint = self.endpoint.clone().unwrap_or(cause);
                return BackendError::ConnectionRefused { url, endpoint };
            }
            if http_kind == Some(HttpErrorKind::Timeout) || io_kind == Some(io::ErrorKind::TimedOut)
            {
                return BackendError::TimedOut { url, cause };
            }
            if http_kind == Some(HttpErrorKind::Connect) {
                return BackendError::Connect { url, cause };
            }
        }
        BackendError::Other { url, cause }
    }
}

/// An error response from the service, as found in an error chain.
struct Response {
    /// e.g. "404 Not Found"
    status: String,
    body: String,
}

/// Finds the HTTP error response in an `object_store` error chain.
///
/// object_store keeps the status and body in a private error type; its
/// message, "Server returned non-2xx status code: 404 Not Found: <body>", is
/// the only way to them.
fn http_response(chain: &[&(dyn StdError + 'static)]) -> Option<Response> {
    const PREFIX: &str = "Server returned non-2xx status code: ";
    chain.iter().find_map(|e| {
        let text = e.to_string();
        let rest = text.strip_prefix(PREFIX)?;
        let (status, body) = rest.split_once(": ").unwrap_or((rest, ""));
        Some(Response {
            status: status.to_owned(),
            body: body.to_owned(),
        })
    })
}

/// The cause of an error in a few words: the HTTP status and the service's
/// error code and message when there was a response, else the first layer
/// under object_store's generic wrapper (e.g. "Unable to open file /x:
/// Permission denied") or, for transport errors, the innermost error
/// ("Connection refused (os error 111)").
fn short_cause(chain: &[&(dyn StdError + 'static)], response: Option<&Response>) -> String {
    let text = if let Some(r) = response {
        let mut s = format!("HTTP {}", r.status);
        if let Some(code) = xml_tag(&r.body, "Code") {
            s.push_str(": ");
            s.push_str(code);
        }
        if let Some(msg) = xml_tag(&r.body, "Message") {
            s.push_str(": ");
            s.push_str(msg);
        }
        s
    } else if chain.iter().any(|e| e.is::<HttpError>()) {
        chain.last().map(|e| e.to_string()).unwrap_or_default()
    } else {
        let first = chain.first().map(|e| e.to_string()).unwrap_or_default();
        match chain.get(1) {
            Some(e) if first.starts_with("Generic ") => e.to_string(),
            _ => first,
        }
    };
    one_line(&text, 300)
}

/// Collapses whitespace (bodies may contain newlines) and caps the length.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 3));
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The text of the first `<tag>…</tag>` in an XML error body (S3, GCS and
/// Azure all answer errors with `<Code>` and `<Message>`).
fn xml_tag<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&close)?;
    let text = body[start..start + len].trim();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_tag_extracts() {
        let body = "<?xml?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(xml_tag(body, "Code"), Some("NoSuchBucket"));
        assert_eq!(
            xml_tag(body, "Message"),
            Some("The specified bucket does not exist")
        );
        assert_eq!(xml_tag(body, "Nope"), None);
        assert_eq!(xml_tag("<Code>", "Code"), None);
        assert_eq!(xml_tag("<Code></Code>", "Code"), None);
    }

    #[test]
    fn one_line_collapses_and_caps() {
        assert_eq!(one_line("a\n  b\tc", 100), "a b c");
        assert_eq!(one_line("ééééé", 3), "é…");
    }

    #[test]
    fn classify_object_store_kinds() {
        let d = Diag::local("memory://m/k");
        let nf = object_store::Error::NotFound {
            path: "k".into(),
            source: "gone".into(),
        };
        assert_eq!(
            d.classify(&nf),
            BackendError::NotFound {
                url: "memory://m/k".into()
            }
        );
        let pd = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(io::Error::from(io::ErrorKind::PermissionDenied)),
        };
        assert!(matches!(
            d.classify(&pd),
            BackendError::PermissionDenied { .. }
        ));
        let refused = object_store::Error::Generic {
            store: "S3",
            source: Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
        };
        let d2 = Diag {
            endpoint: Some("http://127.0.0.1:9".into()),
            ..Diag::local("s3://b/k")
        };
        let e = d2.classify(&refused);
        assert_eq!(
            e.to_string(),
            "s3://b/k: connection refused (http://127.0.0.1:9)"
        );
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn io_error_keeps_message() {
        let e = BackendError::NotFound {
            url: "s3://bucket/key".into(),
        };
        let io: io::Error = e.clone().into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert_eq!(io.to_string(), "s3://bucket/key: not found");
        let back = io.get_ref().and_then(|e| e.downcast_ref::<BackendError>());
        assert_eq!(back, Some(&e));
    }
}
