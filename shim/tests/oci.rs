//! runc's operations on a prepared bundle (shim/src/oci.rs), container
//! mode, on real containers: create → start → exit status, exec, pause,
//! kill, delete, and nothing left behind. (VM mode needs the KVM test host;
//! it is exercised through the real clients in tests/runc_compat.rs.)

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use capsa_image::spec::RunConfig;
use capsa_image::Store;
use capsa_shim::backend::ProcessIo;
use capsa_shim::oci;
use capsa_shim::Roots;
use nix::sys::signal::Signal;

fn require_root() {
    // This harness runs tests on threads, so oci runs libcontainer in a
    // `capsa` process (see oci::create): the one cargo built beside us.
    if std::env::var_os("CAPSA_BIN").is_none() {
        let exe = std::env::current_exe().unwrap();
        let capsa = exe.parent().unwrap().parent().unwrap().join("capsa");
        assert!(
            capsa.exists(),
            "{} is missing: build it first (cargo build --release --workspace --bins)",
            capsa.display()
        );
        std::env::set_var("CAPSA_BIN", capsa);
    }
    // That process exits once the container exists; like containerd's
    // shim, we take its orphans to reap them.
    // SAFETY: plain prctl on our own process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests start real containers and must run as root"
    );
}

/// A bundle whose rootfs is a copy of the demo image, running `args`.
fn bundle(root: &Path, name: &str, args: &[&str]) -> PathBuf {
    let store = Store::open(root).unwrap();
    store.load_demo().unwrap();
    let image = store.get("demo").unwrap();
    let bundle = root.join("bundles").join(name);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    for layer in store.layer_dirs(&image).unwrap() {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(layer.join("."))
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let rc = RunConfig {
        container_id: name.into(),
        args: Some(args.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    };
    let mut spec =
        capsa_image::spec::generate(&image, &rootfs, std::slice::from_ref(&rootfs), &rc).unwrap();
    spec.set_root(Some(
        oci_spec::runtime::RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .unwrap(),
    ));
    // Where capsa run puts containers' cgroups, so the leak check sees them.
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(capsa_container::cgroup::cgroup_path(name)));
    }
    // The host's /etc files capsa run would bind are not there.
    let mounts = spec.mounts().clone().unwrap_or_default();
    spec.set_mounts(Some(
        mounts
            .into_iter()
            .filter(|m| !m.destination().starts_with("/etc"))
            .collect(),
    ));
    spec.save(bundle.join("config.json")).unwrap();
    bundle
}

fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (std::fs::File::from(r), w)
}

fn exit_status(pid: i32) -> i32 {
    capsa_container::process::wait_pid(pid).unwrap()
}

fn leftovers(root: &Path, id: &str) -> Vec<String> {
    let mut out = vec![];
    let roots = Roots::new(Some(root));
    for p in [roots.container(id), roots.runtime().join(id)] {
        if p.exists() {
            out.push(p.display().to_string());
        }
    }
    for h in ["memory", "pids", "cpu", "unified"] {
        let p = Path::new("/sys/fs/cgroup").join(h).join("capsa").join(id);
        if p.exists() {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn create_start_exit_status_and_delete() {
    require_root();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let roots = Roots::new(Some(tmp.path()));
    let b = bundle(
        tmp.path(),
        "one",
        &["sh", "-c", "echo hi; echo err >&2; exit 3"],
    );
    let (mut out, out_w) = pipe();
    let (mut err, err_w) = pipe();
    let io = ProcessIo {
        stdout: Some(out_w),
        stderr: Some(err_w),
        ..Default::default()
    };
    let pid = oci::create(&roots, "one", &b, io).unwrap();
    let st = oci::state(&roots, "one").unwrap();
    assert_eq!((st.status.as_str(), st.pid), ("created", pid));
    assert_eq!(st.bundle, std::fs::canonicalize(&b).unwrap());
    // A second create with the same ID is refused and harms nothing.
    let again = oci::create(&roots, "one", &b, ProcessIo::default()).unwrap_err();
    assert!(format!("{again:#}").contains("already exists"), "{again:#}");
    oci::start(&roots, "one").unwrap();
    assert_eq!(exit_status(pid), 3);
    let (mut o, mut e) = (String::new(), String::new());
    out.read_to_string(&mut o).unwrap();
    err.read_to_string(&mut e).unwrap();
    assert_eq!((o.as_str(), e.as_str()), ("hi\n", "err\n"));
    assert_eq!(oci::state(&roots, "one").unwrap().status, "stopped");
    assert_eq!(oci::list(&roots).unwrap().len(), 1);
    oci::delete(&roots, "one", false).unwrap();
    let gone = oci::state(&roots, "one").unwrap_err();
    assert!(format!("{gone:#}").contains("does not exist"), "{gone:#}");
    assert_eq!(leftovers(tmp.path(), "one"), Vec::<String>::new());
}

#[test]
fn exec_pause_resume_kill() {
    require_root();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let roots = Roots::new(Some(tmp.path()));
    let b = bundle(tmp.path(), "two", &["sleep", "1000"]);
    let pid = oci::create(&roots, "two", &b, ProcessIo::default()).unwrap();
    oci::start(&roots, "two").unwrap();
    assert_eq!(oci::state(&roots, "two").unwrap().status, "running");
    // A running container is not deleted without force.
    assert!(oci::delete(&roots, "two", false).is_err());

    let spec = oci_spec::runtime::Spec::load(b.join("config.json")).unwrap();
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "echo in-$(hostname); exit 4".into(),
    ]));
    let (mut out, out_w) = pipe();
    let io = ProcessIo {
        stdout: Some(out_w),
        ..Default::default()
    };
    let epid = oci::exec(&roots, "two", &p, io, &Default::default()).unwrap();
    assert_eq!(exit_status(epid), 4);
    let mut o = String::new();
    out.read_to_string(&mut o).unwrap();
    assert_eq!(o, "in-two\n");

    let pids = oci::pids(&roots, "two").unwrap();
    assert_eq!(pids, vec![pid]);
    assert!(oci::stats(&roots, "two").unwrap().pids.current >= 1);
    oci::pause(&roots, "two").unwrap();
    assert_eq!(oci::state(&roots, "two").unwrap().status, "paused");
    oci::resume(&roots, "two").unwrap();
    assert_eq!(oci::state(&roots, "two").unwrap().status, "running");
    oci::kill(&roots, "two", Signal::SIGKILL, false).unwrap();
    assert_eq!(exit_status(pid), 137);
    let err = oci::kill(&roots, "two", Signal::SIGTERM, false).unwrap_err();
    assert!(format!("{err:#}").contains("not running"), "{err:#}");
    oci::delete(&roots, "two", false).unwrap();
    assert_eq!(leftovers(tmp.path(), "two"), Vec::<String>::new());
}

#[test]
fn bad_bundles_are_refused_cleanly() {
    require_root();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let roots = Roots::new(Some(tmp.path()));
    let e = oci::create(&roots, "x", &tmp.path().join("nope"), ProcessIo::default()).unwrap_err();
    assert!(format!("{e:#}").contains("bundle"), "{e:#}");
    let e = oci::create(&roots, "../x", tmp.path(), ProcessIo::default()).unwrap_err();
    assert!(format!("{e:#}").contains("invalid container ID"), "{e:#}");
    // An unknown isolation mode in the annotation.
    let b = bundle(tmp.path(), "bad", &["true"]);
    let mut spec = oci_spec::runtime::Spec::load(b.join("config.json")).unwrap();
    spec.set_annotations(Some(
        [(oci::ISOLATION_ANNOTATION.to_string(), "kvm".to_string())].into(),
    ));
    spec.save(b.join("config.json")).unwrap();
    let e = oci::create(&roots, "bad", &b, ProcessIo::default()).unwrap_err();
    assert!(format!("{e:#}").contains("unknown isolation"), "{e:#}");
    // A command that does not exist: create fails, nothing is left.
    let b = bundle(tmp.path(), "missing", &["/no/such/cmd"]);
    let r = oci::create(&roots, "missing", &b, ProcessIo::default());
    if let Ok(pid) = r {
        // libcontainer finds out at start, as runc does.
        assert!(oci::start(&roots, "missing").is_err() || exit_status(pid) != 0);
        let _ = oci::delete(&roots, "missing", true);
    }
    for id in ["x", "bad", "missing"] {
        assert_eq!(leftovers(tmp.path(), id), Vec::<String>::new());
    }
    assert!(oci::list(&roots).unwrap().is_empty());
}
