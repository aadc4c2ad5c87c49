//! The cache key of `crstream run`: what must be the same for a
//! checkpoint of the service to stand for a cold start of it.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Environment variables in the key by default: those that commonly change
/// what a program loads or how it behaves. `--key-env NAME` adds more.
pub const KEY_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "JAVA_HOME",
    "JAVA_TOOL_OPTIONS",
    "CLASSPATH",
    "NODE_OPTIONS",
    "NODE_PATH",
];

/// The executable `program` names: a path, or the first match on PATH.
pub fn resolve_program(program: &str) -> Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    bail!("{program}: not found on PATH")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What identifies the content of an executable: its ELF build-id, or a
/// hash of its bytes (a script, an ELF file without one).
pub fn file_identity(path: &Path) -> Result<String> {
    let real = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    if let Some(id) =
        crstream_core::elf_build_id(&real).with_context(|| format!("reading {}", real.display()))?
    {
        return Ok(format!("{} build-id {}", real.display(), hex(&id)));
    }
    let bytes = std::fs::read(&real).with_context(|| format!("reading {}", real.display()))?;
    Ok(format!(
        "{} sha256 {}",
        real.display(),
        hex(&Sha256::digest(&bytes))
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The default key: a hash of the command line, the working directory,
/// the environment variables of [`KEY_ENV`] and `extra_env`, and the
/// identity of the executable. 32 hex digits.
pub fn compute(cmd: &[String], extra_env: &[String]) -> Result<String> {
    let program = cmd.first().context("no command given")?;
    let exe = resolve_program(program)?;
    let mut h = Sha256::new();
    let mut field = |k: &str, v: &[u8]| {
        h.update(k.as_bytes());
        h.update([0]);
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    };
    field("crstream-run-key", b"1");
    for a in cmd {
        field("arg", a.as_bytes());
    }
    let cwd = std::env::current_dir().context("the working directory")?;
    field("cwd", cwd.as_os_str().as_encoded_bytes());
    let mut names: Vec<&str> = KEY_ENV.to_vec();
    names.extend(extra_env.iter().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    for name in names {
        match std::env::var_os(name) {
            Some(v) => field(name, v.as_encoded_bytes()),
            None => field(name, b"\xff unset"),
        }
    }
    field("exe", file_identity(&exe)?.as_bytes());
    Ok(hex(&h.finalize())[..32].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_changes_with_the_command_and_the_environment() {
        let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = compute(&cmd(&["sh", "-c", "true"]), &[]).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, compute(&cmd(&["sh", "-c", "true"]), &[]).unwrap());
        assert_ne!(a, compute(&cmd(&["sh", "-c", "false"]), &[]).unwrap());
        assert_ne!(
            a,
            compute(
                &cmd(&["sh", "-c", "true"]),
                &["CRSTREAM_KEY_TEST_UNSET".into()]
            )
            .unwrap(),
            "an added variable, even unset, is part of the key"
        );
    }
}
