//! Key files: one secret key per file, hex (an nsec is accepted on reading),
//! created with mode 0600. Secret keys are never printed or logged.

use std::io::Write;
use std::path::Path;

use nostr::{Keys, SecretKey};

/// Parses a secret key given as hex or nsec.
pub fn parse_secret(s: &str) -> Result<Keys, String> {
    SecretKey::parse(s.trim())
        .map(Keys::new)
        .map_err(|_| "the secret key is neither 64 hex characters nor an nsec".to_string())
}

/// Reads a key file. Warns (log) when other users may read it.
pub fn load_key_file(path: &Path) -> Result<Keys, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                log::warn!(
                    "key file {} has mode {mode:o}: other users may read the secret key; run chmod 600 {}",
                    path.display(),
                    path.display()
                );
            }
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    parse_secret(&text).map_err(|e| format!("key file {}: {e}", path.display()))
}

/// Creates a new key file (mode 0600); fails if the file exists.
pub fn generate_key_file(path: &Path) -> Result<Keys, String> {
    let keys = Keys::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create key file {}: {e}", path.display()))?;
    writeln!(f, "{}", keys.secret_key().to_secret_hex())
        .map_err(|e| format!("cannot write key file {}: {e}", path.display()))?;
    Ok(keys)
}

/// Reads a key file, creating it first if it does not exist.
pub fn load_or_create_key_file(path: &Path) -> Result<Keys, String> {
    if path.exists() {
        load_key_file(path)
    } else {
        let keys = generate_key_file(path)?;
        log::info!("created key file {}", path.display());
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.key");
        let keys = generate_key_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            load_key_file(&path).unwrap().public_key(),
            keys.public_key()
        );
        assert!(generate_key_file(&path).is_err(), "must not overwrite");
        assert_eq!(
            load_or_create_key_file(&path).unwrap().public_key(),
            keys.public_key()
        );
    }

    #[test]
    fn rejects_garbage_keys() {
        assert!(parse_secret("not a key").is_err());
        assert!(parse_secret(&"ab".repeat(32)).is_ok());
    }
}
