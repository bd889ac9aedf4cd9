//! `capsa build`: Dockerfiles built into images with real containers for
//! RUN steps, the layer cache, reproducible builds, and podman's `build`
//! of the same Dockerfile as the reference for the image config.

use std::fs;
use std::path::Path;
use std::process::Command;

use capsa_tests::{stderr, stdout, Env};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

/// The image ID `capsa build` printed (its stdout's last line).
fn built_id(out: &str) -> String {
    out.lines().last().unwrap_or("").to_string()
}

/// The stored config of an image, with the fields capsa's typed config
/// does not carry (Healthcheck).
fn raw_config(env: &Env, id: &str) -> serde_json::Value {
    let blob = env
        .path()
        .join("images/blobs/sha256")
        .join(id.trim_start_matches("sha256:"));
    serde_json::from_slice(&fs::read(blob).unwrap()).unwrap()
}

/// No staging or step scratch directory is left in the store.
fn assert_no_scratch(env: &Env) {
    assert!(capsa_tests::files_under(&env.path().join("images/tmp")).is_empty());
    let left: Vec<_> = fs::read_dir(env.path().join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".build-"))
        .collect();
    assert!(left.is_empty(), "step scratch left: {left:?}");
}

fn tar_gz(dir: &Path, name: &str, entries: &[(&str, &str)]) {
    let f = fs::File::create(dir.join(name)).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (path, text) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name as a hostile archive would.
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

const APP: &str = r#"# a multi-stage build of the demo image
ARG BASE=demo
FROM ${BASE} AS builder
ARG GREETING=hello
RUN mkdir -p /out \
    # a comment inside the continuation
 && echo "$GREETING from the build stage" > /out/greeting && echo from-the-step
FROM $BASE
ENV APP_HOME=/app MODE="fast mode"
WORKDIR $APP_HOME
COPY src/ ./src/
COPY --from=builder /out/greeting ./
COPY --chown=1000:1000 --chmod=640 *.txt /data/
COPY a.txt /etc
ADD bundle.tar.gz /opt/
RUN rm /app/src/remove-me && echo ran > /app/ran
LABEL team=ml
EXPOSE 8080 53/udp
USER 1000
HEALTHCHECK --interval=5s CMD ["true"]
STOPSIGNAL SIGINT
CMD ["sh", "-c", "echo $MODE; cat greeting; ls src; stat -c '%u:%g %a' /data/a.txt; ls /data; cat /etc/a.txt /opt/inner/file; cat ran"]
"#;

#[test]
fn build_runs_steps_caches_them_and_makes_a_runnable_image() {
    let env = Env::with_demo();
    let ctx = tempfile::tempdir_in("/var/tmp").unwrap();
    let c = ctx.path();
    write(
        c,
        &[
            ("Dockerfile", APP),
            (".dockerignore", "secret*\n**/*.pyc\n"),
            ("src/main.py", "print('hi')\n"),
            ("src/remove-me", "x\n"),
            ("src/cache.pyc", "junk\n"),
            ("a.txt", "a\n"),
            ("secret.txt", "do not ship\n"),
        ],
    );
    tar_gz(c, "bundle.tar.gz", &[("inner/file", "unpacked\n")]);
    let ctx_s = c.to_str().unwrap();

    let out = env.run(&[
        "build",
        "-t",
        "built:1",
        "--build-arg",
        "GREETING=hi",
        ctx_s,
    ]);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let id = built_id(&stdout(&out));
    assert!(id.starts_with("sha256:"), "no ID printed: {}", stdout(&out));
    // stdout is the ID alone (for `ID=$(capsa build …)`); a step's output
    // goes to stderr with the progress.
    assert_eq!(stdout(&out), format!("{id}\n"));
    assert!(stderr(&out).contains("from-the-step"), "{}", stderr(&out));
    assert!(stderr(&out).contains("STEP 18/18: CMD"), "{}", stderr(&out));

    // What a user of the image sees: every step's effect, the deleted
    // file gone (a whiteout in the RUN layer), the ignored files absent.
    let run = env.ok(&["run", "--rm", "built:1"]);
    assert_eq!(
        run,
        "fast mode\nhi from the build stage\nmain.py\n1000:1000 640\na.txt\na\nunpacked\nran\n"
    );
    let cfg = raw_config(&env, &id);
    let c0 = &cfg["config"];
    assert!(c0["Env"]
        .as_array()
        .unwrap()
        .contains(&"MODE=fast mode".into()));
    assert_eq!(c0["WorkingDir"], "/app");
    assert_eq!(c0["User"], "1000");
    assert_eq!(c0["StopSignal"], "SIGINT");
    assert_eq!(c0["Labels"]["team"], "ml");
    assert_eq!(
        c0["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}, "53/udp": {}})
    );
    assert_eq!(
        c0["Healthcheck"],
        serde_json::json!({"Test": ["CMD", "true"], "Interval": 5_000_000_000u64})
    );
    let history = env.ok(&["history", "--no-trunc", "built:1"]);
    assert!(
        history.contains("#(nop) ENV APP_HOME=/app MODE=\"fast mode\""),
        "{history}"
    );

    // The cache's images stay out of `capsa images` (not out of -a).
    let images = env.ok(&["images", "-q"]);
    assert_eq!(images.lines().count(), 2, "{images}");
    assert!(env.ok(&["images", "-a", "-q"]).lines().count() > 10);

    // Nothing changed: every step from the cache, the same image.
    let again = env.run(&[
        "build",
        "-t",
        "built:2",
        "--build-arg",
        "GREETING=hi",
        ctx_s,
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(built_id(&stdout(&again)), id);
    let quiet = env.run(&["build", "-q", "--build-arg", "GREETING=hi", ctx_s]);
    assert_eq!(
        (stdout(&quiet), stderr(&quiet)),
        (format!("{id}\n"), String::new())
    );
    assert_eq!(
        stderr(&again).matches("Using cache").count(),
        15,
        "{}",
        stderr(&again)
    );

    // --label: one more config step over the Dockerfile's labels.
    let labelled = env.run(&[
        "build",
        "-q",
        "--label",
        "team=infra",
        "--label",
        "reviewed",
        "--build-arg",
        "GREETING=hi",
        ctx_s,
    ]);
    assert!(labelled.status.success(), "{}", stderr(&labelled));
    let lid = built_id(&stdout(&labelled));
    assert_ne!(lid, id);
    let labels = &raw_config(&env, &lid)["config"]["Labels"];
    assert_eq!(
        (&labels["team"], &labels["reviewed"]),
        (&"infra".into(), &"".into())
    );

    // A copied file changed: the steps before its COPY stay cached, that
    // COPY and every later step run again.
    fs::write(c.join("src/main.py"), "print('changed')\n").unwrap();
    let changed = env.run(&["build", "--build-arg", "GREETING=hi", ctx_s]);
    assert!(changed.status.success(), "{}", stderr(&changed));
    let err = stderr(&changed);
    let copy_at = err.find("COPY src/").expect("the COPY step");
    assert_eq!(err[..copy_at].matches("Using cache").count(), 3, "{err}");
    assert_eq!(err[copy_at..].matches("Using cache").count(), 0, "{err}");
    assert_ne!(built_id(&stdout(&changed)), id);

    assert!(
        env.container_ids().is_empty(),
        "a RUN step's container is left"
    );
    assert_no_scratch(&env);
    env.assert_no_leaks(&[]);
}

#[test]
fn build_refuses_bad_input_in_one_line_and_leaves_nothing() {
    let env = Env::with_demo();
    let ctx = tempfile::tempdir_in("/var/tmp").unwrap();
    let c = ctx.path();
    let ctx_s = c.to_str().unwrap();
    let before = env.ok(&["images", "-a", "-q"]);
    let cases: &[(&str, &str)] = &[
        (
            "FROM demo\nRUN echo started && exit 3\n",
            "returned a non-zero code: 3",
        ),
        (
            "FROM demo\nONBUILD RUN true\n",
            "line 2: ONBUILD is not supported",
        ),
        (
            "FROM demo\nRUN --mount=type=cache,target=/c true\n",
            "line 2: RUN --mount",
        ),
        ("FROM demo\nBOGUS x\n", "line 2"),
        (
            "FROM demo\nCOPY ../../etc/passwd /x\n",
            "outside the build context",
        ),
        (
            "FROM demo\nCOPY missing.txt /x\n",
            "missing.txt: no such file",
        ),
        (
            "FROM demo\nADD evil.tar.gz /opt/\n",
            "leaves the destination",
        ),
        ("FROM no-such-image\n", "no-such-image"),
        ("FROM demo AS a\nFROM a\n", ""),
    ];
    tar_gz(c, "evil.tar.gz", &[("../../escaped", "x\n")]);
    for (dockerfile, want) in cases {
        fs::write(c.join("Dockerfile"), dockerfile).unwrap();
        if want.is_empty() {
            let out = env.run(&["build", ctx_s]);
            assert!(out.status.success(), "{dockerfile}: {}", stderr(&out));
            continue;
        }
        let out = env.run(&["build", "-t", "bad:1", ctx_s]);
        assert!(!out.status.success(), "{dockerfile}: built");
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or("");
        assert!(last.contains(want), "{dockerfile}: {err}");
        if dockerfile.contains("ONBUILD") || dockerfile.contains("--mount") {
            assert!(
                !err.contains("STEP"),
                "{dockerfile}: ran before refusing: {err}"
            );
        }
    }
    assert!(!Path::new("/escaped").exists() && !c.join("../escaped").exists());
    fs::write(c.join("Dockerfile"), "FROM demo\n").unwrap();
    for (flags, want) in [
        (&["--platform", "linux/arm64"][..], "linux/amd64"),
        (&["--network", "bridge"][..], "none or host"),
    ] {
        let out = env.run(&[&["build"], flags, &[ctx_s]].concat());
        assert!(!out.status.success());
        assert!(stderr(&out).contains(want), "{flags:?}: {}", stderr(&out));
    }
    // The failed builds named nothing; only the successful one's steps
    // (none: FROM alone) were added.
    assert!(!env.ok(&["images"]).contains("bad"));
    assert_eq!(env.ok(&["images", "-a", "-q"]), before);
    assert!(env.container_ids().is_empty());
    assert_no_scratch(&env);
    env.assert_no_leaks(&[]);
}

const REFERENCE: &str = r#"FROM demo
ENV A=1 B="two words"
WORKDIR /app
COPY f.txt ./
RUN echo built > /app/out.txt
USER 1000
EXPOSE 8080
LABEL team=ml
ENTRYPOINT ["sh"]
CMD ["-c", "cat /app/out.txt /app/f.txt"]
"#;

/// podman, in a private storage root removed at the end.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        assert!(
            Command::new("podman")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "podman is needed as the reference builder (apt-get install podman)"
        );
        Podman {
            dir: tempfile::tempdir_in("/var/tmp").unwrap(),
        }
    }

    /// `podman run` of an image: no network, and limits this host's hard
    /// limits allow (podman's defaults exceed them).
    fn run(&self, image: &str) -> String {
        self.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            image,
        ])
    }

    fn ok(&self, args: &[&str]) -> String {
        let d = self.dir.path();
        let out = Command::new("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "podman {args:?}: {}", stderr(&out));
        stdout(&out)
    }
}

#[test]
fn build_is_reproducible_and_its_config_matches_podmans() {
    let env = Env::with_demo();
    let ctx = tempfile::tempdir_in("/var/tmp").unwrap();
    let c = ctx.path();
    write(
        c,
        &[("Dockerfile", REFERENCE), ("f.txt", "from the context\n")],
    );
    let ctx_s = c.to_str().unwrap();

    // The same context twice, from scratch, with a fixed epoch: the same
    // image, bit for bit.
    let build = |tag: &str| {
        let out = env.run(&[
            "build",
            "--no-cache",
            "--source-date-epoch",
            "1700000000",
            "-t",
            tag,
            ctx_s,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains("Using cache"));
        built_id(&stdout(&out))
    };
    let first = build("repro:1");
    let second = build("repro:2");
    assert_eq!(
        first, second,
        "two builds with one SOURCE_DATE_EPOCH differ"
    );
    let cfg = raw_config(&env, &first);
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
    // Without the epoch the creation time is now: another image.
    let out = env.run(&["build", "--no-cache", ctx_s]);
    assert_ne!(built_id(&stdout(&out)), first);

    // podman builds the same Dockerfile from the same base.
    let podman = Podman::new();
    let demo_tar = c.join("demo.tar");
    env.ok(&["save", "-o", demo_tar.to_str().unwrap(), "demo"]);
    podman.ok(&["load", "-i", demo_tar.to_str().unwrap()]);
    fs::remove_file(&demo_tar).unwrap();
    podman.ok(&["build", "--network", "none", "-t", "pbuilt", ctx_s]);
    let theirs: serde_json::Value =
        serde_json::from_str(&podman.ok(&["image", "inspect", "pbuilt"])).unwrap();
    let theirs = &theirs[0];
    let mut their_cfg = theirs["Config"].clone();
    their_cfg["Labels"]
        .as_object_mut()
        .unwrap()
        .remove("io.buildah.version");
    let ours = &cfg["config"];
    for field in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Labels",
    ] {
        assert_eq!(
            ours[field], their_cfg[field],
            "{field} differs from podman's"
        );
    }
    // The history: the same steps, the same ones with layers, the same
    // lines (COPY names its source by a hash of its own making).
    let lines = |h: &serde_json::Value| -> Vec<(String, bool)> {
        h.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let by = e["created_by"].as_str().unwrap_or("");
                let by = match by.find(" COPY ") {
                    Some(i) => by[..i + 5].to_string(),
                    None => by.to_string(),
                };
                (by, e["empty_layer"].as_bool().unwrap_or(false))
            })
            .collect()
    };
    assert_eq!(lines(&cfg["history"]), lines(&theirs["History"]));

    // capsa's image loads into podman and runs there as here.
    let ours_tar = c.join("ours.tar");
    env.ok(&["save", "-o", ours_tar.to_str().unwrap(), "repro:1"]);
    let loaded = podman.ok(&["load", "-i", ours_tar.to_str().unwrap()]);
    let name = loaded
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: "))
        .expect("podman names what it loaded")
        .trim()
        .to_string();
    let here = env.ok(&["run", "--rm", "repro:1"]);
    assert_eq!(here, "built\nfrom the context\n");
    let there = podman.run(&name);
    assert_eq!(there, here);
    env.assert_no_leaks(&[]);
}

#[test]
fn a_built_image_goes_through_a_registry_and_back() {
    let env = Env::with_demo();
    let reg = capsa_tests::Registry::start();
    let ctx = tempfile::tempdir_in("/var/tmp").unwrap();
    write(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM demo\nRUN echo pushed > /msg\nCMD [\"cat\", \"/msg\"]\n",
        )],
    );
    let name = format!("{}/capsa/app:1", reg.addr);
    env.ok(&["build", "-t", &name, ctx.path().to_str().unwrap()]);
    let out = env.ok(&["push", &name]);
    assert!(
        out.starts_with(&format!("{name}: digest: sha256:")),
        "{out}"
    );
    // Pushed again: every blob is there already.
    let again = env.run(&["push", &name]);
    assert!(
        stderr(&again).contains("0 blob(s) pushed, 3 already"),
        "{}",
        stderr(&again)
    );

    env.ok(&["rmi", &name]);
    assert!(!env.ok(&["images"]).contains("capsa/app"));
    env.ok(&["pull", &name]);
    assert_eq!(env.ok(&["run", "--rm", &name]), "pushed\n");

    // podman pulls and runs what capsa pushed.
    let podman = Podman::new();
    podman.ok(&["pull", "--tls-verify=false", &name]);
    let there = podman.run(&name);
    assert_eq!(there, "pushed\n");

    // logout of a registry capsa holds no credentials for says so.
    let out = env.run(&["logout", &reg.addr]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not logged in"), "{}", stderr(&out));
    env.assert_no_leaks(&[]);
}
