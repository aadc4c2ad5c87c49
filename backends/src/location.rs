//! URL → store: parsing locations and configuring object stores from the environment.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use crate::error::{BackendError, Diag, one_line};

/// Where bytes live.
#[derive(Debug, Clone)]
pub enum Location {
    /// `-`: standard output for sinks, standard input for sources.
    Stdio,
    /// An object in a store (a local file is an object of the store rooted at `/`).
    Store {
        /// The URL as the user wrote it (used in every error message).
        url: String,
        /// The store holding the object.
        store: Arc<dyn ObjectStore>,
        /// The object's path inside `store`.
        path: Path,
    },
}

/// A location with what error classification needs to know about it.
pub(crate) enum Resolved {
    Stdio,
    Store(Target),
}

/// An object in a store plus its diagnostics context.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    pub diag: Arc<Diag>,
    /// The smallest part size the service accepts for multipart uploads.
    pub min_part_size: usize,
    /// The file, for local targets.
    pub local_path: Option<PathBuf>,
    /// Starting a multipart upload does not contact the service (Azure), so
    /// opening a sink checks the destination explicitly to fail early.
    pub probe_on_open: bool,
}

impl Target {
    /// Fails for a local path that is a directory (object_store would report
    /// "not found" for reads, and leave its temporary file behind when the
    /// final rename fails for writes).
    pub(crate) fn check_not_dir(&self) -> Result<(), BackendError> {
        match &self.local_path {
            Some(p) if p.is_dir() => Err(BackendError::InvalidUrl {
                url: self.diag.url.clone(),
                reason: "is a directory".to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// The configuration environment URLs are resolved in: a snapshot of
/// environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`, `CRSTREAM_*`, ...).
///
/// The free functions ([`parse_location`], [`open_sink`](crate::open_sink), ...)
/// use [`Env::process`]; tests and embedders can pass explicit variables with
/// [`Env::from_pairs`] instead of mutating the process environment.
///
/// Besides the object_store variables, it reads:
/// - `AWS_S3_FORCE_PATH_STYLE=true`: path-style S3 requests (the default
///   unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` is set).
/// - An `http://` endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT`,
///   `AZURE_STORAGE_ENDPOINT`) allows plain HTTP unless `AWS_ALLOW_HTTP` /
///   `AZURE_ALLOW_HTTP` says otherwise.
/// - `CRSTREAM_MAX_RETRIES` (default 5): retries of a failed request, with
///   exponential backoff from 100 ms up to 4 s.
#[derive(Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

/// Only the names: values hold secrets.
impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl Env {
    /// A snapshot of the process environment (non-UTF-8 variables are skipped).
    pub fn process() -> Self {
        Self::from_pairs(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// An environment made of exactly these variables.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of a variable.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    fn truthy(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parses a location; see [`parse_location`].
    pub fn parse_location(&self, url: &str) -> Result<Location, BackendError> {
        Ok(match self.resolve(url)? {
            Resolved::Stdio => Location::Stdio,
            Resolved::Store(t) => Location::Store {
                url: url.to_owned(),
                store: t.store,
                path: t.path,
            },
        })
    }

    pub(crate) fn resolve(&self, url: &str) -> Result<Resolved, BackendError> {
        let invalid = |reason: &str| BackendError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url == "-" {
            return Ok(Resolved::Stdio);
        }
        if url.is_empty() {
            return Err(invalid("empty location"));
        }
        let Some((scheme, rest)) = split_scheme(url) else {
            return local_target(url, std::path::Path::new(url)).map(Resolved::Store);
        };
        let target = match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
                let path = parsed.to_file_path().map_err(|()| {
                    invalid("a file URL needs an absolute path and no host, like file:///dir/file")
                })?;
                local_target(url, &path)?
            }
            "memory" => {
                let (name, key) = split_bucket(url, rest, "store name")?;
                Target {
                    store: memory_store(name),
                    path: key,
                    diag: Arc::new(Diag::local(url)),
                    min_part_size: 1,
                    local_path: None,
                    probe_on_open: false,
                }
            }
            "s3" => {
                let (bucket, key) = split_bucket(url, rest, "bucket")?;
                self.s3(url, bucket, key)?
            }
            "gs" => {
                let (bucket, key) = split_bucket(url, rest, "bucket")?;
                self.gcs(url, bucket, key)?
            }
            "az" | "azure" => {
                let (container, key) = split_bucket(url, rest, "container")?;
                self.azure(url, container, key)?
            }
            _ => {
                return Err(BackendError::UnsupportedScheme {
                    url: url.to_owned(),
                    scheme: scheme.to_owned(),
                });
            }
        };
        Ok(Resolved::Store(target))
    }

    fn retry(&self) -> RetryConfig {
        let max_retries = self
            .get("CRSTREAM_MAX_RETRIES")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(5);
        // Shorter than object_store's default (10 retries, up to 15 s apart) so
        // that a wrong endpoint fails in seconds rather than a minute.
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(4),
                base: 2.0,
            },
            max_retries,
            retry_timeout: Duration::from_secs(120),
        }
    }

    fn s3(&self, url: &str, bucket: &str, path: Path) -> Result<Target, BackendError> {
        let mut b = AmazonS3Builder::new().with_http_connector(crate::http::Connector);
        for (k, v) in self.with_prefix("AWS_") {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                b = b.with_config(key, v);
            }
        }
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .find_map(|k| self.get(k));
        if endpoint.is_some_and(|e| e.starts_with("http://"))
            && self.get("AWS_ALLOW_HTTP").is_none()
        {
            b = b.with_allow_http(true);
        }
        if self.truthy("AWS_S3_FORCE_PATH_STYLE") == Some(true) {
            b = b.with_virtual_hosted_style_request(false);
        }
        let store = b
            .with_bucket_name(bucket)
            .with_retry(self.retry())
            .build()
            .map_err(|e| config_error(url, &e))?;

        let region = self
            .get("AWS_REGION")
            .or_else(|| self.get("AWS_DEFAULT_REGION"))
            .unwrap_or("us-east-1");
        let implicit = self.get("AWS_ACCESS_KEY_ID").is_none()
            && self.truthy("AWS_SKIP_SIGNATURE") != Some(true);
        let mut markers = vec![
            self.get("AWS_METADATA_ENDPOINT")
                .unwrap_or("169.254.169.254")
                .trim_end_matches('/')
                .trim_start_matches("http://")
                .to_owned(),
            "169.254.170.2".to_owned(),
            "/latest/api/token".to_owned(),
            "/latest/meta-data/".to_owned(),
        ];
        markers.extend(
            self.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                .map(str::to_owned),
        );
        markers.extend(self.get("AWS_ENDPOINT_URL_STS").map(str::to_owned));
        Ok(Target {
            store: Arc::new(store),
            path,
            diag: Arc::new(Diag {
                url: url.to_owned(),
                endpoint: Some(
                    endpoint
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com")),
                ),
                implicit_credentials: implicit,
                credential_markers: markers,
                credential_hint: "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where instance or container credentials are available",
            }),
            min_part_size: 5 << 20,
            local_path: None,
            probe_on_open: false,
        })
    }

    fn gcs(&self, url: &str, bucket: &str, path: Path) -> Result<Target, BackendError> {
        let mut b = GoogleCloudStorageBuilder::new().with_http_connector(crate::http::Connector);
        // Same sources as GoogleCloudStorageBuilder::from_env, read from `self`.
        if let Some(p) = self.get("SERVICE_ACCOUNT") {
            b = b.with_service_account_path(p);
        }
        for (k, v) in self.with_prefix("GOOGLE_") {
            if let Ok(key) = k.to_ascii_lowercase().parse::<GoogleConfigKey>() {
                b = b.with_config(key, v);
            }
        }
        let store = b
            .with_bucket_name(bucket)
            .with_retry(self.retry())
            .build()
            .map_err(|e| config_error(url, &e))?;
        let explicit = [
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_BEARER_TOKEN",
            "SERVICE_ACCOUNT",
        ]
        .iter()
        .any(|k| self.get(k).is_some())
            || self.truthy("GOOGLE_SKIP_SIGNATURE") == Some(true);
        Ok(Target {
            store: Arc::new(store),
            path,
            diag: Arc::new(Diag {
                url: url.to_owned(),
                endpoint: Some(
                    self.get("GOOGLE_BASE_URL")
                        .unwrap_or("https://storage.googleapis.com")
                        .to_owned(),
                ),
                implicit_credentials: !explicit,
                credential_markers: vec![
                    "metadata.google.internal".to_owned(),
                    "169.254.169.254".to_owned(),
                ],
                credential_hint: "set GOOGLE_SERVICE_ACCOUNT (a key file), GOOGLE_SERVICE_ACCOUNT_KEY or GOOGLE_APPLICATION_CREDENTIALS",
            }),
            min_part_size: 5 << 20,
            local_path: None,
            probe_on_open: false,
        })
    }

    fn azure(&self, url: &str, container: &str, path: Path) -> Result<Target, BackendError> {
        let mut b = MicrosoftAzureBuilder::new().with_http_connector(crate::http::Connector);
        for (k, v) in self.with_prefix("AZURE_") {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AzureConfigKey>() {
                b = b.with_config(key, v);
            }
        }
        if let Some(msi) = self.get("MSI_ENDPOINT") {
            b = b.with_msi_endpoint(msi);
        }
        let emulator = b
            .get_config_value(&AzureConfigKey::UseEmulator)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint = b.get_config_value(&AzureConfigKey::Endpoint);
        if !emulator && b.get_config_value(&AzureConfigKey::AccountName).is_none() {
            return Err(BackendError::Config {
                url: url.to_owned(),
                reason:
                    "set AZURE_STORAGE_ACCOUNT_NAME, or AZURE_STORAGE_USE_EMULATOR=true for azurite"
                        .to_owned(),
            });
        }
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
            && self.get("AZURE_ALLOW_HTTP").is_none()
        {
            b = b.with_allow_http(true);
        }
        let store = b
            .with_container_name(container)
            .with_retry(self.retry())
            .build()
            .map_err(|e| config_error(url, &e))?;
        let explicit = [
            AzureConfigKey::AccessKey,
            AzureConfigKey::SasKey,
            AzureConfigKey::Token,
            AzureConfigKey::ClientSecret,
            AzureConfigKey::FederatedTokenFile,
        ]
        .iter()
        .any(|k| b_has(self, k))
            || emulator;
        let endpoint = endpoint.or_else(|| {
            if emulator {
                Some("http://127.0.0.1:10000".to_owned())
            } else {
                self.get("AZURE_STORAGE_ACCOUNT_NAME")
                    .map(|a| format!("https://{a}.blob.core.windows.net"))
            }
        });
        Ok(Target {
            store: Arc::new(store),
            path,
            diag: Arc::new(Diag {
                url: url.to_owned(),
                endpoint,
                implicit_credentials: !explicit,
                credential_markers: vec![
                    "169.254.169.254".to_owned(),
                    "login.microsoftonline.com".to_owned(),
                ],
                credential_hint: "set AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY or a service principal (AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/AZURE_TENANT_ID)",
            }),
            min_part_size: 1,
            local_path: None,
            probe_on_open: true,
        })
    }
}

/// Whether any `AZURE_*` variable of `env` configures `key`.
fn b_has(env: &Env, key: &AzureConfigKey) -> bool {
    env.with_prefix("AZURE_").any(|(k, _)| {
        k.to_ascii_lowercase()
            .parse::<AzureConfigKey>()
            .is_ok_and(|parsed| &parsed == key)
    })
}

fn config_error(url: &str, e: &object_store::Error) -> BackendError {
    // Builder errors come wrapped as "Generic S3 error: <reason>"; keep the reason.
    let text = match std::error::Error::source(e) {
        Some(s) if matches!(e, object_store::Error::Generic { .. }) => s.to_string(),
        _ => e.to_string(),
    };
    BackendError::Config {
        url: url.to_owned(),
        reason: one_line(&text, 300),
    }
}

/// Parses a location:
/// - `-`: stdio;
/// - a plain path (relative or absolute) or `file:///abs/path`: a local file;
/// - `s3://bucket/key`, `gs://bucket/key`, `az://container/key` (or
///   `azure://`): object stores configured from the process environment (see
///   [`Env`]);
/// - `memory://name/key`: an in-process store shared by name (for tests).
///
/// Object keys are taken literally (no percent-decoding); they may not be
/// empty, end with `/`, or contain empty, `.` or `..` segments.
///
/// No I/O happens here except resolving the directory of a local path.
pub fn parse_location(url: &str) -> Result<Location, BackendError> {
    Env::process().parse_location(url)
}

/// `scheme://rest` when the text starts with a URL scheme; anything else is a path.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some((scheme, rest))
}

/// `bucket/key` → (bucket, key).
fn split_bucket<'a>(url: &str, rest: &'a str, what: &str) -> Result<(&'a str, Path), BackendError> {
    let invalid = |reason: String| BackendError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid(format!("missing {what}")));
    }
    if key.is_empty() {
        return Err(invalid("missing object key".to_owned()));
    }
    if key.ends_with('/') {
        return Err(invalid("object key must not end with /".to_owned()));
    }
    let path = Path::parse(key).map_err(|e| invalid(format!("bad object key: {e}")))?;
    Ok((bucket, path))
}

/// A local file as an object of the filesystem store rooted at `/`.
fn local_target(url: &str, p: &std::path::Path) -> Result<Target, BackendError> {
    let invalid = |reason: String| BackendError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    if p.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(invalid("is a directory path".to_owned()));
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| invalid(format!("cannot resolve relative path: {e}")))?
            .join(p)
    };
    let abs = normalize(&abs);
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Err(invalid("not a file path".to_owned()));
    };
    // The directory's real path, so that `..` after a symlink means what the
    // kernel means; a directory that does not exist yet stays lexical.
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
    let file = parent.join(name);
    let path = Path::from_absolute_path(&file)
        .map_err(|e| invalid(format!("unsupported file name: {e}")))?;
    Ok(Target {
        store: local_store(),
        path,
        diag: Arc::new(Diag::local(url)),
        min_part_size: 1,
        local_path: Some(file),
        probe_on_open: false,
    })
}

/// Lexical normalization of an absolute path: drops `.`, applies `..`.
fn normalize(p: &std::path::Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn local_store() -> Arc<dyn ObjectStore> {
    static STORE: OnceLock<Arc<dyn ObjectStore>> = OnceLock::new();
    STORE
        .get_or_init(|| Arc::new(LocalFileSystem::new()))
        .clone()
}

/// The process-wide in-memory store called `name`, created on first use.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores.entry(name.to_owned()).or_default().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::from_pairs([("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")])
    }

    fn store_path(loc: Location) -> String {
        match loc {
            Location::Store { path, .. } => path.to_string(),
            Location::Stdio => panic!("expected a store"),
        }
    }

    #[test]
    fn stdio() {
        assert!(matches!(env().parse_location("-"), Ok(Location::Stdio)));
    }

    #[test]
    fn local_paths() {
        let cwd = std::fs::canonicalize(std::env::current_dir().unwrap()).unwrap();
        let rel = store_path(env().parse_location("some/dir/../file.img").unwrap());
        assert_eq!(
            format!("/{rel}"),
            cwd.join("some/file.img").to_str().unwrap()
        );
        assert_eq!(
            store_path(env().parse_location("/tmp/./x/../a b%c").unwrap()),
            format!(
                "{}/a b%c",
                std::fs::canonicalize("/tmp")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .trim_start_matches('/')
            )
        );
        assert_eq!(
            store_path(
                env()
                    .parse_location("file:///nonexistent-dir/f%20g")
                    .unwrap()
            ),
            "nonexistent-dir/f g"
        );
        for bad in ["/", "dir/", "file://host/x"] {
            let e = env().parse_location(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    BackendError::InvalidUrl { .. } | BackendError::UnsupportedScheme { .. }
                ),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn object_urls() {
        assert_eq!(
            store_path(env().parse_location("s3://bucket/a/b c/d").unwrap()),
            "a/b c/d"
        );
        assert_eq!(
            store_path(env().parse_location("S3://bucket/k").unwrap()),
            "k"
        );
        assert_eq!(
            store_path(env().parse_location("memory://m/k").unwrap()),
            "k"
        );
        for bad in [
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://b/dir/",
            "s3://b/a//b",
            "s3://b/a/../b",
            "memory://x",
            "gs://b",
            "az:///k",
        ] {
            let e = env().parse_location(bad).unwrap_err();
            assert!(matches!(e, BackendError::InvalidUrl { .. }), "{bad}: {e}");
            assert!(e.to_string().starts_with(&format!("{bad}: ")), "{e}");
        }
    }

    #[test]
    fn unsupported_scheme() {
        let e = env().parse_location("ftp://x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported URL scheme \"ftp\" in ftp://x (expected -, a path, file://, s3://, gs://, az://, memory://)"
        );
        // Not a scheme: a path that happens to contain "://".
        assert!(env().parse_location("./a://b").is_ok());
    }

    #[test]
    fn memory_is_shared_by_name() {
        let (
            Location::Store { store: a, .. },
            Location::Store { store: b, .. },
            Location::Store { store: c, .. },
        ) = (
            env().parse_location("memory://shared-test/x").unwrap(),
            env().parse_location("memory://shared-test/y").unwrap(),
            env().parse_location("memory://other-test/y").unwrap(),
        )
        else {
            panic!("expected stores");
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn env_prefix_and_debug_hides_values() {
        let e = Env::from_pairs([
            ("AWS_A", "1"),
            ("AWS_B", "secret"),
            ("AWT", "x"),
            ("AW", "y"),
        ]);
        let keys: Vec<_> = e.with_prefix("AWS_").map(|(k, _)| k).collect();
        assert_eq!(keys, ["AWS_A", "AWS_B"]);
        assert!(!format!("{e:?}").contains("secret"));
    }
}
