//! Registry credentials `capsa login` stores, in docker's config.json
//! format (`{"auths": {"REGISTRY": {"auth": base64("user:password")}}}`),
//! in `auth.json` in capsa's state directory, readable by root alone
//! (0600). Pull and push use them when no credentials are given.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

use crate::error::Result;

pub struct Credentials {
    path: PathBuf,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Credentials {
    /// The credentials file of the store at `dir`.
    pub fn open(dir: &Path) -> Credentials {
        Credentials {
            path: dir.join("auth.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Value {
        fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}))
    }

    /// The user and password stored for `registry`.
    pub fn lookup(&self, registry: &str) -> Option<(String, String)> {
        let cfg = self.read();
        let auth = cfg["auths"][registry]["auth"].as_str()?;
        let text = String::from_utf8(B64.decode(auth).ok()?).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }

    /// Stores (replacing) the credentials for `registry`.
    pub fn store(&self, registry: &str, user: &str, password: &str) -> Result<()> {
        let mut cfg = self.read();
        if !cfg["auths"].is_object() {
            cfg["auths"] = json!({});
        }
        cfg["auths"][registry] = json!({"auth": B64.encode(format!("{user}:{password}"))});
        self.write(&cfg)
    }

    /// Removes `registry`'s credentials; false if there were none.
    pub fn remove(&self, registry: &str) -> Result<bool> {
        let mut cfg = self.read();
        let removed = cfg["auths"]
            .as_object_mut()
            .is_some_and(|a| a.remove(registry).is_some());
        if removed {
            self.write(&cfg)?;
        }
        Ok(removed)
    }

    /// Written whole to a new 0600 file, then renamed over the old one: a
    /// reader never sees half of it, and the secret is never world-readable.
    fn write(&self, cfg: &Value) -> Result<()> {
        let data = serde_json::to_vec_pretty(cfg).expect("JSON serializes");
        crate::store::write_atomic_mode(&self.path, &data, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stored_as_docker_does_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials::open(dir.path());
        assert_eq!(c.lookup("localhost:5000"), None);
        c.store("localhost:5000", "ann", "pa:ss").unwrap();
        c.store("other.example", "bob", "x").unwrap();
        assert_eq!(
            c.lookup("localhost:5000"),
            Some(("ann".into(), "pa:ss".into()))
        );
        let mode = fs::metadata(c.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let v: Value = serde_json::from_slice(&fs::read(c.path()).unwrap()).unwrap();
        assert_eq!(v["auths"]["localhost:5000"]["auth"], "YW5uOnBhOnNz");
        assert!(c.remove("localhost:5000").unwrap());
        assert!(!c.remove("localhost:5000").unwrap());
        assert_eq!(c.lookup("other.example"), Some(("bob".into(), "x".into())));
    }
}
