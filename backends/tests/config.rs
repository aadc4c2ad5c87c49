//! Store configuration from the environment, and failures that need no
//! server: S3, GCS and Azure URLs resolved with explicit variables.

mod common;

use std::io;

use common::closed_port;
use crstream_backends::{BackendError, Env, Location, SinkOptions};

fn store_of(env: &Env, url: &str) -> (String, String) {
    match env.parse_location(url) {
        Ok(Location::Store {
            store,
            path,
            url: u,
        }) => {
            assert_eq!(u, url);
            (store.to_string(), path.to_string())
        }
        Ok(Location::Stdio) => panic!("{url}: expected a store"),
        Err(e) => panic!("{url}: {e}"),
    }
}

#[test]
fn s3_builds_from_env() {
    let env = Env::from_pairs([
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_REGION", "eu-west-3"),
    ]);
    let (store, path) = store_of(&env, "s3://my-bucket/dir/img.crs");
    assert!(store.contains("my-bucket"), "{store}");
    assert_eq!(path, "dir/img.crs");
    let e = env.parse_location("s3://my-bucket").unwrap_err();
    assert_eq!(
        e.to_string(),
        "s3://my-bucket: invalid location (missing object key)"
    );
    let bad = Env::from_pairs([("AWS_SKIP_SIGNATURE", "maybe")]);
    let e = bad.parse_location("s3://b/k").unwrap_err();
    assert!(matches!(e, BackendError::Config { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("s3://b/k: invalid configuration ("),
        "{e}"
    );
}

#[test]
fn gcs_builds_with_a_service_account_key() {
    let env = Env::from_pairs([(
        "GOOGLE_SERVICE_ACCOUNT_KEY",
        r#"{"private_key":"","private_key_id":"","client_email":"x@y","disable_oauth":true}"#,
    )]);
    let (store, path) = store_of(&env, "gs://gbucket/a/b");
    assert!(store.contains("gbucket"), "{store}");
    assert_eq!(path, "a/b");
}

#[test]
fn gcs_bad_or_missing_credentials_file_is_a_config_error() {
    let env = Env::from_pairs([("GOOGLE_SERVICE_ACCOUNT", "/nonexistent/key.json")]);
    let e = env.parse_location("gs://b/k").unwrap_err();
    assert!(matches!(e, BackendError::Config { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("gs://b/k: invalid configuration ("),
        "{msg}"
    );
    assert!(msg.contains("/nonexistent/key.json"), "{msg}");
    assert!(!msg.contains('\n'));

    let env = Env::from_pairs([("GOOGLE_SERVICE_ACCOUNT_KEY", "{not json")]);
    let e = env.parse_location("gs://b/k").unwrap_err();
    assert!(matches!(e, BackendError::Config { .. }), "{e}");
}

#[tokio::test]
async fn gcs_connection_refused() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let env = Env::from_pairs([
        (
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            r#"{"private_key":"","private_key_id":"","client_email":"","disable_oauth":true}"#,
        ),
        ("GOOGLE_BASE_URL", &endpoint),
        ("CRSTREAM_MAX_RETRIES", "0"),
    ]);
    let e = env.open_source("gs://b/k").await.err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("gs://b/k: connection refused ({endpoint})")
    );
}

#[test]
fn azure_builds_from_account_or_emulator() {
    let env = Env::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
        ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5"),
    ]);
    let (store, path) = store_of(&env, "az://cont/x/y");
    assert!(store.contains("cont"), "{store}");
    assert_eq!(path, "x/y");
    let (store, _) = store_of(&env, "azure://cont2/x");
    assert!(store.contains("cont2"), "{store}");

    let emu = Env::from_pairs([("AZURE_STORAGE_USE_EMULATOR", "true")]);
    let (store, path) = store_of(&emu, "az://c/k");
    assert!(store.contains('c'), "{store}");
    assert_eq!(path, "k");
}

#[test]
fn azure_without_account_is_a_config_error() {
    let e = Env::default().parse_location("az://c/k").unwrap_err();
    assert_eq!(
        e.to_string(),
        "az://c/k: invalid configuration (set AZURE_STORAGE_ACCOUNT_NAME, or AZURE_STORAGE_USE_EMULATOR=true for azurite)"
    );
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn azure_connection_refused() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let env = Env::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1"),
        ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5"),
        ("AZURE_STORAGE_ENDPOINT", &endpoint),
        ("CRSTREAM_MAX_RETRIES", "0"),
    ]);
    let e = env
        .open_sink("az://c/k", &SinkOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!("az://c/k: connection refused ({endpoint})")
    );
}

#[tokio::test]
async fn s3_connection_refused() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let env = Env::from_pairs([
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("CRSTREAM_MAX_RETRIES", "1"),
    ]);
    let url = "s3://bucket/key";
    let e = env.open_source(url).await.err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("{url}: connection refused ({endpoint})")
    );
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::ConnectionRefused);
    let e = env
        .open_sink(url, &SinkOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, BackendError::ConnectionRefused { .. }), "{e}");
}

#[tokio::test]
async fn s3_unknown_host_cannot_connect() {
    let env = Env::from_pairs([
        ("AWS_ENDPOINT_URL", "http://no-such-host.invalid:9000"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("CRSTREAM_MAX_RETRIES", "0"),
    ]);
    let e = env.open_source("s3://b/k").await.err().unwrap();
    assert!(matches!(e, BackendError::Connect { .. }), "{e}");
    assert!(
        e.to_string().starts_with("s3://b/k: cannot connect ("),
        "{e}"
    );
}

#[tokio::test]
async fn s3_missing_credentials_are_reported_as_such() {
    // No keys, and an instance-metadata endpoint where nothing listens.
    let meta = format!("http://127.0.0.1:{}", closed_port());
    let s3 = format!("http://127.0.0.1:{}", closed_port());
    let env = Env::from_pairs([
        ("AWS_ENDPOINT_URL", s3.as_str()),
        ("AWS_METADATA_ENDPOINT", meta.as_str()),
        ("CRSTREAM_MAX_RETRIES", "0"),
    ]);
    let url = "s3://bucket/key";
    let e = env.open_source(url).await.err().unwrap();
    assert!(matches!(e, BackendError::NoCredentials { .. }), "{e}");
    assert!(
        e.to_string().starts_with(
            "s3://bucket/key: no credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        ),
        "{e}"
    );
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::PermissionDenied);
}

#[tokio::test]
async fn s3_https_endpoint_speaks_tls() {
    // Plain http:// goes through crstream's own client; https:// must still
    // go through TLS: the server sees a TLS ClientHello (record type 0x16).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let first_byte = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut conn, &mut byte).unwrap();
        byte[0]
    });
    let env = Env::from_pairs([
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("CRSTREAM_MAX_RETRIES", "0"),
    ]);
    let e = env.open_source("s3://b/k").await.err().unwrap();
    assert!(e.to_string().starts_with("s3://b/k: "), "{e}");
    assert_eq!(first_byte.join().unwrap(), 0x16);
}
