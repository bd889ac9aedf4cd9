//! `Store::save` archives are accepted by the real tools people use:
//! `podman load` and containerd's `ctr image import` (skopeo is covered by
//! registry_pull.rs). Missing tools make the tests FAIL with a message.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capsa_image::Store;

fn require(tool: &str, package: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is missing: install Debian's {package} package (scripts/setup.sh does)"
    );
}

fn saved_demo(dir: &Path) -> (String, std::path::PathBuf) {
    let s = Store::open(&dir.join("store")).unwrap();
    s.load_demo().unwrap();
    let img = s.get("demo").unwrap();
    let out = dir.join("demo.tar");
    s.save("demo", &out).unwrap();
    (img.record.id, out)
}

#[test]
fn podman_loads_saved_archive() {
    require("/usr/bin/podman", "podman");
    let d = tempfile::tempdir().unwrap();
    let (id, archive) = saved_demo(d.path());
    let podman = |args: &[&str]| {
        let out = Command::new("/usr/bin/podman")
            .arg("--root")
            .arg(d.path().join("podman-root"))
            .arg("--runroot")
            .arg(d.path().join("podman-run"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    podman(&["load", "-i", archive.to_str().unwrap()]);
    let images = podman(&[
        "images",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Repository}}:{{.Tag}}",
    ]);
    assert!(
        images.contains(&id[7..]),
        "podman shows another image id: {images}"
    );
    assert!(images.contains("demo:latest"), "{images}");

    // And back: podman's docker-archive and oci-archive exports load into capsa.
    for format in ["docker-archive", "oci-archive"] {
        let out = d.path().join(format!("podman-{format}.tar"));
        podman(&[
            "save",
            "--format",
            format,
            "-o",
            out.to_str().unwrap(),
            "demo:latest",
        ]);
        let s = Store::open(&d.path().join(format!("store-{format}"))).unwrap();
        let loaded = s.load(&out).unwrap();
        assert_eq!(loaded.len(), 1, "{format}");
        assert_eq!(loaded[0].id, id, "{format}: same config digest");
        assert!(
            loaded[0].names.iter().any(|n| n.ends_with("demo:latest")),
            "{format}: {:?}",
            loaded[0].names
        );
        let img = s.get(&id).unwrap();
        assert!(s.layer_dirs(&img).unwrap()[0].join("bin/busybox").is_file());
    }
}

/// A private containerd, killed when dropped.
struct Containerd {
    child: Child,
    sock: std::path::PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ctr_imports_saved_archive() {
    require("/usr/bin/containerd", "containerd");
    require("/usr/bin/ctr", "containerd");
    let d = tempfile::tempdir().unwrap();
    let (id, archive) = saved_demo(d.path());
    let sock = d.path().join("containerd.sock");
    let log = fs::File::create(d.path().join("containerd.log")).unwrap();
    let child = Command::new("/usr/bin/containerd")
        .arg("--root")
        .arg(d.path().join("root"))
        .arg("--state")
        .arg(d.path().join("state"))
        .arg("--address")
        .arg(&sock)
        .args(["--log-level", "error"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let c = Containerd { child, sock };
    let ctr = |args: &[&str]| {
        Command::new("/usr/bin/ctr")
            .arg("-a")
            .arg(&c.sock)
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctr(&["version"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "containerd did not start: {}",
            fs::read_to_string(d.path().join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = ctr(&["image", "import", archive.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "ctr image import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctr(&["image", "ls"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(ls.contains("docker.io/library/demo:latest"), "{ls}");
    let out = ctr(&["content", "ls", "-q"]);
    let content = String::from_utf8_lossy(&out.stdout);
    assert!(
        content.contains(&id),
        "containerd lacks the config blob {id}: {content}"
    );
    drop(c);
    // Remove containerd's state (snapshots are plain dirs when not mounted).
    let _ = fs::remove_dir_all(d.path().join("root"));
}
