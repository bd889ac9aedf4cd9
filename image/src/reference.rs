//! Image names: validation and docker-like normalization.
//!
//! Names are stored with `:latest` added when there is neither tag nor
//! digest (`demo` -> `demo:latest`, `localhost:5000/x` ->
//! `localhost:5000/x:latest`) and in Docker Hub's short form: a leading
//! `docker.io/`, `docker.io/library/` or `library/` is dropped, so `busybox`,
//! `library/busybox` and `docker.io/library/busybox:latest` name the same
//! image.

use crate::error::{Error, Result};

fn invalid(reference: &str, reason: &str) -> Error {
    Error::InvalidReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    }
}

/// `name` normalized, and as the registry client's reference.
pub(crate) fn for_registry(name: &str) -> Result<(String, oci_client::Reference)> {
    let normalized = normalize(name)?;
    let r = normalized
        .parse()
        .map_err(|e| invalid(name, &format!("{e}")))?;
    Ok((normalized, r))
}

/// Splits `name` into (repository, tag, digest).
pub(crate) fn split(name: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (name, None),
    };
    let slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..]), digest),
        None => (rest, None, digest),
    }
}

/// Validates an image name and adds `:latest` when it has no tag or digest.
pub fn normalize(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid(name, "empty name"));
    }
    let (repo, tag, digest) = split(name);
    if repo.is_empty() {
        return Err(invalid(name, "missing repository name"));
    }
    let mut parts: Vec<&str> = repo.split('/').collect();
    // A first component with a '.' or ':' or equal to "localhost" is a registry host.
    if parts.len() > 1 {
        let host = parts[0];
        if host.contains('.') || host.contains(':') || host == "localhost" {
            let valid_host = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            if !valid_host {
                return Err(invalid(name, "invalid registry host"));
            }
            parts.remove(0);
        }
    }
    for p in &parts {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && p.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(invalid(
                name,
                "repository names may only contain lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
    }
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && t.as_bytes()[0] != b'.'
            && t.as_bytes()[0] != b'-';
        if !ok {
            return Err(invalid(
                name,
                "invalid tag (letters, digits, '.', '_', '-'; at most 128)",
            ));
        }
    }
    if let Some(d) = digest {
        crate::digest::hex_of(d).map_err(|_| invalid(name, "invalid digest after '@'"))?;
    }
    if tag.is_none() && digest.is_none() {
        Ok(format!("{name}:latest"))
    } else {
        Ok(name.to_string())
    }
}

/// The comparison form of a normalized name (without `docker.io/library/`).
pub fn canonical(name: &str) -> &str {
    let n = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("index.docker.io/library/"))
        .or_else(|| name.strip_prefix("docker.io/"))
        .or_else(|| name.strip_prefix("index.docker.io/"))
        .unwrap_or(name);
    // Docker Hub's official images: "library/busybox" is "busybox".
    match n.strip_prefix("library/") {
        Some(rest) if !rest.contains('/') => rest,
        _ => n,
    }
}

/// The fully qualified form containerd expects in `io.containerd.image.name`.
pub(crate) fn fully_qualified(name: &str) -> String {
    let first = name.split('/').next().unwrap_or("");
    let has_host =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("demo").unwrap(), "demo:latest");
        assert_eq!(normalize("demo:1").unwrap(), "demo:1");
        assert_eq!(
            normalize("localhost:5000/x").unwrap(),
            "localhost:5000/x:latest"
        );
        assert_eq!(
            normalize("localhost:5000/x:t").unwrap(),
            "localhost:5000/x:t"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/a/b:t").unwrap(),
            "127.0.0.1:5000/a/b:t"
        );
        assert!(normalize("Demo").is_err());
        assert!(normalize("demo:").is_err());
        assert!(normalize("demo:a b").is_err());
        assert!(normalize("").is_err());
        assert!(normalize("x@sha256:abc").is_err());
        assert_eq!(split("localhost:5000/x"), ("localhost:5000/x", None, None));
        assert_eq!(canonical("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(canonical("library/busybox:1"), "busybox:1");
        assert_eq!(canonical("docker.io/me/app:1"), "me/app:1");
        assert_eq!(canonical("library/a/b:1"), "library/a/b:1");
        assert_eq!(
            fully_qualified("demo:latest"),
            "docker.io/library/demo:latest"
        );
        assert_eq!(fully_qualified("a/b:1"), "docker.io/a/b:1");
        assert_eq!(fully_qualified("localhost:5000/x:t"), "localhost:5000/x:t");
    }
}
