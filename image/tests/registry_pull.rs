//! Pull tests against a real local registry: Debian's `docker-registry`
//! (distribution 2.8) started per test on a free loopback port with its own
//! config and storage, images pushed with `skopeo`. Missing tools make the
//! tests FAIL with a message saying what to install.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capsa_image::{Error, PullOptions, Store};
use sha2::{Digest, Sha256};

const REGISTRY: &str = "/usr/bin/docker-registry";
const SKOPEO: &str = "/usr/bin/skopeo";

fn require(tool: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is missing: the registry pull tests need Debian's docker-registry and skopeo \
         packages (run scripts/setup.sh, or apt-get install docker-registry skopeo)"
    );
}

/// A running registry, killed when dropped (also when a test panics).
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a registry on `ip`; with `user`, it requires basic auth.
    fn start(ip: &str, user: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let auth = user.map(|(u, p)| {
            let hash = bcrypt::hash_with_result(p, 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoA);
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, format!("{u}:{hash}\n")).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: capsa-test\n    path: {}\n",
                htpasswd.display()
            )
        });
        Registry::start_with(ip, dir, auth)
    }

    /// Starts a registry on `ip` with an optional `auth:` config section.
    fn start_with(ip: &str, dir: tempfile::TempDir, auth: Option<String>) -> Registry {
        require(REGISTRY);
        let port = free_port(ip);
        let addr = format!("{ip}:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let Some(a) = auth {
            config.push_str(&a);
        }
        let cfg_path = dir.path().join("config.yml");
        fs::write(&cfg_path, config).unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = reg.child.try_wait() {
                let log =
                    fs::read_to_string(reg._dir.path().join("registry.log")).unwrap_or_default();
                panic!("docker-registry exited ({st}): {log}");
            }
            if http(&reg.addr, "GET", "/v2/", None, None).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come up on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }
}

/// A minimal HTTP/1.1 request; returns (status, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or(&[]);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, resp))
}

fn skopeo_push(archive: &Path, dest: &str, creds: Option<&str>) {
    require(SKOPEO);
    let mut cmd = Command::new(SKOPEO);
    cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    let out = cmd
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy to {dest} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, s)
}

/// The demo image saved as an OCI archive, and its store.
fn demo_archive() -> (tempfile::TempDir, Store, PathBuf) {
    let (d, s) = store();
    s.load_demo().unwrap();
    let out = d.path().join("demo.tar");
    s.save("demo", &out).unwrap();
    (d, s, out)
}

fn assert_clean(s: &Store) {
    assert_eq!(
        fs::read_dir(s.dir().join("tmp")).unwrap().count(),
        0,
        "staging leftovers"
    );
    assert_eq!(
        fs::read_dir(s.dir().join("blobs/sha256")).unwrap().count(),
        0,
        "blobs left behind"
    );
    assert_eq!(
        fs::read_dir(s.dir().join("layers")).unwrap().count(),
        0,
        "layers left behind"
    );
    assert!(s.list().unwrap().is_empty());
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An OCI layout with one image of the given arch whose single layer is
/// zstd-compressed; returns (dir, manifest digest, config digest).
fn zstd_layout(dir: &Path, arch: &str) -> (PathBuf, String, String) {
    let mut b = tar::Builder::new(Vec::new());
    let data = format!("built for {arch}\n");
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(1);
    b.append_data(&mut h, "etc/arch", data.as_bytes()).unwrap();
    let layer = b.into_inner().unwrap();
    let z = zstd::encode_all(&layer[..], 3).unwrap();
    let root = dir.join(format!("layout-{arch}"));
    fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    let put = |data: &[u8]| {
        let d = sha256(data);
        fs::write(root.join("blobs/sha256").join(&d[7..]), data).unwrap();
        (d, data.len())
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/cat", "/etc/arch"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}
    });
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let (ld, ls) = put(&z);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": ld, "size": ls}]
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}
    ]});
    fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (root, md, cd)
}

fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn pull_demo_from_local_registry() {
    let reg = Registry::start("127.0.0.1", None);
    let (_d, src, archive) = demo_archive();
    let demo = src.get("demo").unwrap();
    let dest = format!("{}/demo:t", reg.addr);
    skopeo_push(&archive, &dest, None);

    let (_d2, s) = store();
    let pulled = s.pull(&dest, &PullOptions::default()).unwrap();
    assert_eq!(pulled.id, demo.id, "same config digest");
    assert_eq!(pulled.names, vec![dest.clone()]);
    let img = s.get(&dest).unwrap();
    let diff_ids = |i: &capsa_image::Image| {
        i.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(diff_ids(&img), diff_ids(&demo));
    assert_eq!(img.config, demo.config);
    let dirs = s.layer_dirs(&img).unwrap();
    assert!(dirs[0].join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(fs::read_dir(s.dir().join("tmp")).unwrap().count(), 0);

    // Pulling again downloads nothing new and keeps one image.
    let again = s.pull(&dest, &PullOptions::default()).unwrap();
    assert_eq!(again.id, demo.id);
    assert_eq!(s.list().unwrap().len(), 1);

    // An unknown tag fails clearly and leaves nothing.
    let (_d3, empty) = store();
    let e = empty
        .pull(&format!("{}/demo:nope", reg.addr), &PullOptions::default())
        .unwrap_err();
    eprintln!("expected error: {e}");
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert!(e.to_string().contains("demo:nope"), "{e}");
    assert_clean(&empty);

    // Manifest list: an arm64 image first, then the amd64 demo. capsa picks amd64.
    let tmp = tempfile::tempdir().unwrap();
    let (arm_layout, arm_manifest, _) = zstd_layout(tmp.path(), "arm64");
    let arm_tar = tmp.path().join("arm.tar");
    tar_dir(&arm_layout, &arm_tar);
    skopeo_push(&arm_tar, &format!("{}/multi:arm", reg.addr), None);
    skopeo_push(&archive, &format!("{}/multi:amd", reg.addr), None);
    let demo_manifest = fs::read(src.blob_path(&demo.manifest_digest).unwrap()).unwrap();
    let arm_size = fs::read(arm_layout.join("blobs/sha256").join(&arm_manifest[7..]))
        .unwrap()
        .len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_manifest, "size": arm_size,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": demo.manifest_digest,
             "size": demo_manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}}
        ]
    });
    let (status, resp) = http(
        &reg.addr,
        "PUT",
        "/v2/multi/manifests/1",
        Some("application/vnd.oci.image.index.v1+json"),
        Some(&serde_json::to_vec(&index).unwrap()),
    )
    .unwrap();
    assert_eq!(status, 201, "pushing the index failed: {resp}");
    let (_d4, s4) = store();
    let multi = s4
        .pull(&format!("{}/multi:1", reg.addr), &PullOptions::default())
        .unwrap();
    assert_eq!(multi.id, demo.id, "the linux/amd64 entry was chosen");
    assert_eq!(
        s4.get(&multi.id).unwrap().manifest_digest,
        demo.manifest_digest
    );

    // The arm64 image alone is refused (wrong platform), leaving nothing.
    let (_d5, s5) = store();
    let e = s5
        .pull(&format!("{}/multi:arm", reg.addr), &PullOptions::default())
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert_clean(&s5);
}

#[test]
fn pull_zstd_layer() {
    let reg = Registry::start("127.0.0.1", None);
    let tmp = tempfile::tempdir().unwrap();
    let (layout, manifest, config) = zstd_layout(tmp.path(), "amd64");
    let t = tmp.path().join("z.tar");
    tar_dir(&layout, &t);
    let dest = format!("{}/zst:1", reg.addr);
    skopeo_push(&t, &dest, None);
    let (_d, s) = store();
    let p = s.pull(&dest, &PullOptions::default()).unwrap();
    assert_eq!(p.id, config);
    let img = s.get("zst:1").err();
    assert!(img.is_some(), "the name includes the registry");
    let img = s.get(&dest).unwrap();
    assert_eq!(img.manifest_digest, manifest);
    assert_eq!(
        img.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let dirs = s.layer_dirs(&img).unwrap();
    assert_eq!(
        fs::read_to_string(dirs[0].join("etc/arch")).unwrap(),
        "built for amd64\n"
    );
}

#[test]
fn pull_with_basic_auth_and_insecure_flag() {
    // 127.0.0.2 is loopback but not "localhost" to capsa: plain HTTP needs --insecure.
    let reg = Registry::start("127.0.0.2", Some(("alice", "s3cret")));
    let (_d, src, archive) = demo_archive();
    let demo_id = src.get("demo").unwrap().record.id;
    let dest = format!("{}/private/demo:1", reg.addr);
    skopeo_push(&archive, &dest, Some("alice:s3cret"));

    let (_d2, s) = store();
    let creds = |u: &str, p: &str| PullOptions {
        username: Some(u.into()),
        password: Some(p.into()),
        insecure: true,
    };
    // No credentials, wrong password: refused, nothing left.
    let e = s
        .pull(
            &dest,
            &PullOptions {
                insecure: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    eprintln!("expected error: {e}");
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert_clean(&s);
    let e = s.pull(&dest, &creds("alice", "wrong")).unwrap_err();
    eprintln!("expected error: {e}");
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert_clean(&s);
    // Without --insecure capsa speaks HTTPS to a non-local registry, which fails.
    let e = s
        .pull(
            &dest,
            &PullOptions {
                insecure: false,
                ..creds("alice", "s3cret")
            },
        )
        .unwrap_err();
    eprintln!("expected error: {e}");
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert!(e.to_string().contains("--insecure"), "{e}");
    assert_clean(&s);
    // Right credentials over plain HTTP.
    let p = s.pull(&dest, &creds("alice", "s3cret")).unwrap();
    assert_eq!(p.id, demo_id);
    assert_eq!(s.get(&dest).unwrap().id, demo_id);
}

// ---------- bearer tokens: a tiny token server for the registry ----------

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is needed to make the token signing key (apt-get install openssl)");
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Issues RS256 JWTs the way distribution's token auth expects them (x5c
/// header with the signing certificate, which is the registry's root).
struct TokenServer {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn token_server(dir: &Path, user: &'static str, password: &'static str) -> TokenServer {
    let key = dir.join("token.key");
    let cert = dir.join("token.crt");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=capsa-token",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
        None,
    );
    let der = openssl(
        &["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"],
        None,
    );
    let x5c = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(der)
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let basic = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        };
        for conn in listener.incoming() {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // Read the whole request head (it may arrive in pieces).
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&head).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            let authed = req.lines().any(|l| {
                l.to_ascii_lowercase().starts_with("authorization:") && l.contains(&basic)
            });
            let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
            let mut scope = String::new();
            let mut service = String::new();
            for kv in query.split('&') {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                let v = v
                    .replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",")
                    .replace("%3a", ":")
                    .replace("%2f", "/")
                    .replace("%2c", ",");
                match k {
                    "scope" => scope = v,
                    "service" => service = v,
                    _ => {}
                }
            }
            let mut access = vec![];
            if authed {
                // scope = repository:NAME:ACTIONS
                let parts: Vec<&str> = scope.splitn(2, ':').collect();
                if parts.len() == 2 {
                    if let Some((name, actions)) = parts[1].rsplit_once(':') {
                        access.push(serde_json::json!({
                            "type": parts[0], "name": name,
                            "actions": actions.split(',').collect::<Vec<_>>()
                        }));
                    }
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
            let claims = serde_json::json!({
                "iss": "capsa-test-issuer", "sub": if authed { user } else { "" },
                "aud": service, "exp": now + 300, "nbf": now - 60, "iat": now - 60,
                "jti": format!("{now}-{}", rand_suffix()), "access": access
            });
            let signing_input = format!(
                "{}.{}",
                b64url(&serde_json::to_vec(&header).unwrap()),
                b64url(&serde_json::to_vec(&claims).unwrap())
            );
            let sig = openssl(
                &["dgst", "-sha256", "-sign", key.to_str().unwrap()],
                Some(signing_input.as_bytes()),
            );
            let jwt = format!("{signing_input}.{}", b64url(&sig));
            let body = serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300})
                .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    TokenServer {
        addr,
        stop,
        thread: Some(thread),
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

impl Registry {
    /// A registry whose clients need a bearer token, which the returned
    /// token server (kept alive by the caller) gives `user` with `password`.
    fn with_token_auth(user: &'static str, password: &'static str) -> (Registry, TokenServer) {
        let dir = tempfile::tempdir().unwrap();
        let tokens = token_server(dir.path(), user, password);
        let auth = format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: capsa-registry\n    issuer: capsa-test-issuer\n    rootcertbundle: {}\n",
            tokens.addr,
            dir.path().join("token.crt").display()
        );
        (Registry::start_with("127.0.0.1", dir, Some(auth)), tokens)
    }
}

#[test]
fn pull_with_bearer_token_auth() {
    let (reg, _tokens) = Registry::with_token_auth("bob", "t0ken-pass");
    let (_d, src, archive) = demo_archive();
    let demo_id = src.get("demo").unwrap().record.id;
    let dest = format!("{}/team/demo:2", reg.addr);
    skopeo_push(&archive, &dest, Some("bob:t0ken-pass"));

    let (_d2, s) = store();
    // Anonymous: the token has no access, the registry refuses.
    let e = s.pull(&dest, &PullOptions::default()).unwrap_err();
    eprintln!("expected error: {e}");
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert_clean(&s);
    let opts = PullOptions {
        username: Some("bob".into()),
        password: Some("t0ken-pass".into()),
        insecure: false,
    };
    let p = s.pull(&dest, &opts).unwrap();
    assert_eq!(p.id, demo_id);
    assert!(s.layer_dirs(&s.get(&dest).unwrap()).unwrap()[0]
        .join("bin/busybox")
        .is_file());
}

/// The manifest skopeo reads at `reference`, as the registry sent it.
fn skopeo_inspect(reference: &str, creds: Option<&str>) -> Vec<u8> {
    require(SKOPEO);
    let mut cmd = Command::new(SKOPEO);
    cmd.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    let out = cmd
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn push_round_trip_skips_what_the_registry_has() {
    let reg = Registry::start("127.0.0.1", None);
    let (_d, s) = store();
    s.load_demo().unwrap();
    let demo = s.get("demo").unwrap();
    let dest = format!("{}/capsa/demo:1", reg.addr);

    let first = s
        .push("demo", Some(&dest), &PullOptions::default())
        .unwrap();
    assert_eq!((first.sent, first.skipped), (2, 0), "config and layer sent");
    assert_eq!(first.digest, demo.manifest_digest, "the manifest as stored");
    // skopeo reads what capsa pushed: the same manifest, byte for byte.
    let raw = skopeo_inspect(&dest, None);
    assert_eq!(sha256(&raw), demo.manifest_digest);
    let raw: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(raw["config"]["digest"], demo.id.as_str());
    assert_eq!(raw["layers"][0]["digest"], demo.layers[0].digest.as_str());

    // Again, under another tag: nothing to send but the manifest.
    let again = s
        .push(
            "demo",
            Some(&format!("{}/capsa/demo:2", reg.addr)),
            &PullOptions::default(),
        )
        .unwrap();
    assert_eq!((again.sent, again.skipped), (0, 2));

    // Pulled back into an empty store: the same image.
    let (_d2, back) = store();
    let pulled = back.pull(&dest, &PullOptions::default()).unwrap();
    assert_eq!(pulled.id, demo.id);
    assert_eq!(
        back.get(&dest).unwrap().manifest_digest,
        demo.manifest_digest
    );

    // An image that is not in the store is named.
    let err = s
        .push("nope:1", Some(&dest), &PullOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn login_checks_and_keeps_credentials_for_push_and_pull() {
    let reg = Registry::start("127.0.0.1", Some(("ann", "s3cret")));
    let (_d, s) = store();
    s.load_demo().unwrap();
    let dest = format!("{}/capsa/private:1", reg.addr);

    // Without credentials the registry refuses the push.
    let err = s
        .push("demo", Some(&dest), &PullOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("capsa/private"), "{err}");
    // A wrong password is refused by login, and nothing is stored.
    let bad = s.login(&reg.addr, "ann", "wrong", false).unwrap_err();
    assert!(!bad.to_string().is_empty());
    assert!(!s.dir().join("auth.json").exists());

    s.login(&reg.addr, "ann", "s3cret", false).unwrap();
    let mode = fs::metadata(s.dir().join("auth.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let pushed = s
        .push("demo", Some(&dest), &PullOptions::default())
        .unwrap();
    assert_eq!(pushed.sent, 2);
    skopeo_inspect(&dest, Some("ann:s3cret"));
    // The stored credentials serve a pull into the same store too.
    s.pull(&dest, &PullOptions::default()).unwrap();

    assert!(s.logout(&reg.addr).unwrap());
    assert!(!s.logout(&reg.addr).unwrap());
    assert!(s
        .push("demo", Some(&dest), &PullOptions::default())
        .is_err());
}

#[test]
fn push_and_login_with_bearer_token_auth() {
    let (reg, _tokens) = Registry::with_token_auth("bob", "t0ken-pass");
    let (_d, s) = store();
    s.load_demo().unwrap();
    let dest = format!("{}/team/pushed:1", reg.addr);
    // Anonymous: the token grants nothing, the push is refused.
    assert!(s
        .push("demo", Some(&dest), &PullOptions::default())
        .is_err());
    assert!(s.login(&reg.addr, "bob", "wrong", false).is_err());
    s.login(&reg.addr, "bob", "t0ken-pass", false).unwrap();
    let pushed = s
        .push("demo", Some(&dest), &PullOptions::default())
        .unwrap();
    assert_eq!(pushed.sent, 2);
    let raw = skopeo_inspect(&dest, Some("bob:t0ken-pass"));
    assert_eq!(sha256(&raw), pushed.digest);
}
