//! Azure against azurite, when CRSTREAM_TEST_AZURE_ENDPOINT points to one
//! (e.g. `azurite-blob --blobPort 10055 --disableTelemetry` and
//! CRSTREAM_TEST_AZURE_ENDPOINT=http://127.0.0.1:10055). Optional: skipped
//! with a note when unset.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{assert_same, get, put, random_bytes, write_uneven};
use crstream_backends::{BackendError, Env, ReadOptions, SinkOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Azurite's well-known development account.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

const PARTS: SinkOptions = SinkOptions {
    part_size: 1 << 20,
    parts_in_flight: 3,
};

fn endpoint() -> Option<String> {
    match std::env::var("CRSTREAM_TEST_AZURE_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e.trim_end_matches('/').to_owned()),
        _ => {
            eprintln!("CRSTREAM_TEST_AZURE_ENDPOINT is not set: skipping the azurite test");
            None
        }
    }
}

fn env(endpoint: &str) -> Env {
    Env::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.to_owned()),
        ("AZURE_STORAGE_ACCOUNT_KEY", KEY.to_owned()),
        ("AZURE_STORAGE_ENDPOINT", format!("{endpoint}/{ACCOUNT}")),
        ("CRSTREAM_MAX_RETRIES", "1".to_owned()),
    ])
}

#[tokio::test]
async fn azurite_round_trip_abort_and_errors() {
    let Some(ep) = endpoint() else { return };
    let env = env(&ep);
    let container = format!("crstream-{}", std::process::id());
    create_container(&ep, &container).await;

    let url = format!("az://{container}/dir/image.crs");
    let data = random_bytes((5 << 20) + 3, 31);
    put(&env, &url, &data, &PARTS).await;
    assert_same(&get(&env, &url, ReadOptions::default()).await, &data);
    let tiny = ReadOptions {
        chunk_size: 300_001,
        in_flight: 6,
    };
    assert_same(&get(&env, &url, tiny).await, &data);
    let r = env.open_source(&url).await.unwrap().ranged().unwrap();
    let got = r.read_range(1_048_575..1_048_579).await.unwrap();
    assert_same(&got, &data[1_048_575..1_048_579]);

    // Abort: nothing new appears, the previous object stays.
    let mut sink = env.open_sink(&url, &PARTS).await.unwrap();
    write_uneven(&mut sink, &random_bytes(3 << 20, 32)).await;
    sink.flush().await.unwrap();
    sink.abort().await.unwrap();
    assert_same(&get(&env, &url, ReadOptions::default()).await, &data);
    let fresh = format!("az://{container}/fresh");
    let mut sink = env.open_sink(&fresh, &PARTS).await.unwrap();
    write_uneven(&mut sink, &random_bytes(3 << 20, 33)).await;
    drop(sink);
    assert!(!env.exists(&fresh).await.unwrap());

    let missing = format!("az://{container}/missing");
    let e = env.open_source(&missing).await.err().unwrap();
    assert_eq!(e.to_string(), format!("{missing}: not found"));

    let nocont = format!("az://{container}-nope/x");
    let e = env.open_source(&nocont).await.err().unwrap();
    assert!(matches!(e, BackendError::NoSuchBucket { .. }), "{e}");
    let e = env.open_sink(&nocont, &PARTS).await.err().unwrap();
    assert_eq!(e.to_string(), format!("{nocont}: no such bucket"));
}

/// Creates a container with a SharedKey-signed request (object_store has no
/// API for it).
async fn create_container(endpoint: &str, container: &str) {
    let host = endpoint.trim_start_matches("http://");
    let date = http_date(SystemTime::now());
    let version = "2021-08-06";
    // Verb, 11 empty standard headers, x-ms-* headers, resource, query.
    let to_sign = format!(
        "PUT\n{}x-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container",
        "\n".repeat(11)
    );
    let sig = base64_encode(&hmac_sha256(&base64_decode(KEY), to_sign.as_bytes()));
    let req = format!(
        "PUT /{ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: {host}\r\n\
         x-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{sig}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut s = TcpStream::connect(host).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.starts_with("HTTP/1.1 201"),
        "creating container: {resp}"
    );
}

/// RFC 1123 date, as x-ms-date wants it.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {mon} {year} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// SHA-256 (FIPS 180-4); constants derived from the primes as the standard defines them.
fn sha256(data: &[u8]) -> [u8; 32] {
    let primes: Vec<u32> = (2u32..)
        .filter(|n| (2..*n).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .take(64)
        .collect();
    let frac32 = |x: f64| ((x - x.floor()) * 4_294_967_296.0) as u32;
    let k: Vec<u32> = primes
        .iter()
        .map(|&p| frac32(f64::from(p).cbrt()))
        .collect();
    let mut h: Vec<u32> = primes[..8]
        .iter()
        .map(|&p| frac32(f64::from(p).sqrt()))
        .collect();

    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v: [u32; 8] = h.clone().try_into().unwrap();
        for i in 0..64 {
            let [a, b, c, d, e, f, g, hh] = v;
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(k[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            v = [
                t1.wrapping_add(s0.wrapping_add(maj)),
                a,
                b,
                c,
                d.wrapping_add(t1),
                e,
                f,
                g,
            ];
        }
        for (x, y) in h.iter_mut().zip(v) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = if key.len() > 64 {
        sha256(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(sha256(&inner)).collect();
    sha256(&outer)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Vec<u8> {
    let vals: Vec<u32> = s
        .bytes()
        .filter(|&b| b != b'=')
        .map(|b| B64.iter().position(|&x| x == b).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for c in vals.chunks(4) {
        let n = c
            .iter()
            .enumerate()
            .fold(0, |n, (i, v)| n | v << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..c.len()]);
    }
    out
}

#[test]
fn signing_helpers_match_known_values() {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        hex(&sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // RFC 4231, test case 2.
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64_encode(b"fooba"), "Zm9vYmE=");
    assert_eq!(base64_decode("Zm9vYg=="), b"foob");
    assert_eq!(
        base64_decode(&base64_encode(&base64_decode(KEY))),
        base64_decode(KEY)
    );
    assert_eq!(
        http_date(UNIX_EPOCH + std::time::Duration::from_secs(784_111_777)),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
}
