//! `capsa compose`: the seeds' setup — a notebook-like "dev" service on a
//! published port with the project directory mounted, and a "processing"
//! service built from a Dockerfile that reads the shared data, writes its
//! results and talks to dev by name once dev is healthy — then `down`
//! leaving nothing behind. Ports and volumes in both the short and the
//! long syntax.

use std::fs;
use std::path::Path;

use capsa_tests::{stderr, stdout, Env};

const COMPOSE: &str = r#"name: seeds
x-common: &common
  volumes: ["./work:/work"]
services:
  dev:
    <<: *common
    image: demo
    command: sh -c 'mkdir -p /srv && echo notebook > /srv/index.html && exec httpd -f -p 8888 -h /srv'
    ports:
      - {target: 8888, published: "${DEV_PORT:?give DEV_PORT}", host_ip: 127.0.0.1, protocol: tcp}
    extra_hosts: ["db:10.1.2.3", "gw:host-gateway"]
    shm_size: 96m
    userns_mode: auto
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8888/"]
      interval: 1s
      retries: 20
  processing:
    build:
      context: ./processing
      args:
        GREETING: hello
    x-capsa: {isolation: container}
    environment:
      INPUT: /work/data.csv
    env_file: settings.env
    volumes:
      - ./work:/work
      - {type: volume, source: cache, target: /cache}
      - {type: tmpfs, target: /scratch, tmpfs: {size: 1m}}
    deploy:
      resources:
        limits: {memory: 64m, pids: 100}
    storage_opt: {size: 64m}
    depends_on:
      dev: {condition: service_healthy}
volumes:
  cache:
"#;

const DOCKERFILE: &str = r#"FROM demo
ARG GREETING
ENV GREETING=$GREETING
CMD ["sh", "-c", "wc -l < $INPUT > /work/result.txt; wget -q -O- http://dev:8888/ >> /work/result.txt; echo $GREETING $MODE > /cache/note; cat /cache/note; grep -c ' /scratch tmpfs .*size=1024k' /proc/mounts; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"]
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn compose(env: &Env, dir: &Path, port: u16, args: &[&str]) -> std::process::Output {
    let mut c = env.cmd(&[&["compose"], args].concat());
    c.current_dir(dir).env("DEV_PORT", port.to_string());
    c.output().unwrap()
}

#[test]
fn the_seeds_setup_runs_and_down_leaves_nothing() {
    let env = Env::with_demo();
    let proj = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = proj.path();
    fs::create_dir_all(d.join("work")).unwrap();
    fs::create_dir_all(d.join("processing")).unwrap();
    fs::write(d.join("compose.yaml"), COMPOSE).unwrap();
    fs::write(d.join("processing/Dockerfile"), DOCKERFILE).unwrap();
    fs::write(d.join("settings.env"), "MODE=batch\n").unwrap();
    fs::write(d.join("work/data.csv"), "a\nb\nc\n").unwrap();
    let port = free_port();

    let up = compose(&env, d, port, &["up", "-d"]);
    assert!(up.status.success(), "up: {}", stderr(&up));
    // processing ran after dev was healthy: it counted the shared data and
    // reached dev by its service name; the result is on the host.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !d.join("work/result.txt").exists()
        || fs::read_to_string(d.join("work/result.txt"))
            .unwrap()
            .lines()
            .count()
            < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no result: {}",
            stderr(&up)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        fs::read_to_string(d.join("work/result.txt")).unwrap(),
        "3\nnotebook\n"
    );
    // dev answers on its published port on the host.
    let page = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&page), "notebook\n");

    let ps = stdout(&compose(&env, d, port, &["ps"]));
    // dev's healthcheck is capsa's to run, as docker's daemon runs it.
    assert!(
        ps.contains("seeds-dev-1")
            && ps.contains("dev")
            && ps.contains("(healthy)")
            && ps.contains(&format!("127.0.0.1:{port}->8888/tcp")),
        "{ps}"
    );
    assert!(
        ps.contains("seeds-processing-1") && ps.contains("seeds-processing"),
        "{ps}"
    );
    let logs = stdout(&compose(&env, d, port, &["logs", "processing"]));
    // Build arg, env_file, named volume and the pids limit reached it.
    assert_eq!(
        logs,
        "processing  | hello batch\nprocessing  | 1\nprocessing  | 100\n"
    );
    assert_eq!(
        env.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.StorageOpt.size}}",
            "seeds-processing-1"
        ]),
        "67108864\n"
    );
    let exec = compose(
        &env,
        d,
        port,
        &["exec", "-T", "dev", "cat", "/srv/index.html"],
    );
    assert_eq!(stdout(&exec), "notebook\n");
    let shm = compose(
        &env,
        d,
        port,
        &[
            "exec",
            "-T",
            "dev",
            "sh",
            "-c",
            "grep ' /dev/shm ' /proc/mounts | grep -o 'size=[0-9]*k'",
        ],
    );
    assert_eq!(stdout(&shm), "size=98304k\n", "shm_size");
    // userns_mode: auto: its root is not the host's (published port and
    // healthcheck working through it above).
    let map = compose(
        &env,
        d,
        port,
        &["exec", "-T", "dev", "cat", "/proc/self/uid_map"],
    );
    let map = stdout(&map);
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert!(
        fields.len() == 3 && fields[0] == "0" && fields[1] != "0",
        "userns_mode: {map}"
    );
    // extra_hosts: an address as given, host-gateway as the host's on the
    // project's network.
    let hosts = compose(
        &env,
        d,
        port,
        &[
            "exec",
            "-T",
            "dev",
            "grep",
            "-E",
            "\t(db|gw)$",
            "/etc/hosts",
        ],
    );
    let hosts = stdout(&hosts);
    let lines: Vec<&str> = hosts.lines().collect();
    assert_eq!(lines.first(), Some(&"10.1.2.3\tdb"), "{hosts}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("10.89.") && l.ends_with(".1\tgw")),
        "{hosts}"
    );
    let config = stdout(&compose(&env, d, port, &["config"]));
    // ${DEV_PORT} filled in, the long form kept.
    assert!(config.contains(&format!("published: '{port}'")), "{config}");
    // up again: what runs is left running.
    let again = compose(&env, d, port, &["up", "-d"]);
    assert!(
        stderr(&again).contains("Container seeds-dev-1: running"),
        "{}",
        stderr(&again)
    );

    let down = compose(&env, d, port, &["down", "-v"]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(env.container_ids().is_empty(), "containers left");
    assert!(
        !env.ok(&["network", "ls"]).contains("seeds_"),
        "network left"
    );
    assert!(!env.ok(&["volume", "ls"]).contains("seeds_"), "volume left");
    env.assert_no_leaks(&[]);
}

#[test]
fn a_bad_compose_file_is_one_line_naming_the_key_and_makes_nothing() {
    let env = Env::with_demo();
    let proj = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = proj.path();
    for (text, want) in [
        (
            "services:\n  web:\n    image: demo\n    portz: [80]\n",
            "services.web",
        ),
        ("services:\n  web:\n    image: demo\nbogus: 1\n", "bogus"),
        (
            "services:\n  web:\n    image: demo\n    tty: maybe\n",
            "services.web.tty",
        ),
        (
            "services:\n  web:\n    image: demo\n    depends_on: [db]\n",
            "services.web.depends_on: no service db",
        ),
        (
            "services:\n  web:\n    image: demo\n    x-capsa: {isolation: vmm}\n",
            "isolation vmm",
        ),
        ("services:\n  web: {}\n", "give image or build"),
        (
            "services:\n  web:\n    image: demo\n    volumes: [{type: bind, target: /x, bogus: 1}]\n",
            "services.web.volumes[0]: unknown field `bogus`",
        ),
        (
            "services:\n  web:\n    image: demo\n    volumes: [{type: bind, target: /x}]\n",
            "services.web.volumes[0]: a bind volume needs a source",
        ),
        (
            "services:\n  web:\n    image: demo\n    scale: 2\n    ports: ['8080:80']\n",
            "services.web.ports: 8080:80 publishes one host port",
        ),
        (
            "services:\n  web:\n    image: demo\n    container_name: w\n    deploy: {replicas: 2}\n",
            "services.web.container_name",
        ),
        (
            "services:\n  web:\n    image: demo\n    scale: 2\n    deploy: {replicas: 3}\n",
            "scale (2) and deploy.replicas (3) differ",
        ),
        (
            "services:\n  web:\n    extends: {file: common.yaml, service: app}\n",
            "services.web.extends.file: reading",
        ),
        (
            "services:\n  a:\n    extends: b\n  b:\n    extends: a\n",
            "extends itself",
        ),
    ] {
        fs::write(d.join("compose.yaml"), text).unwrap();
        let out = compose(&env, d, 1, &["up", "-d"]);
        assert!(!out.status.success(), "{text}");
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{text}: {err}");
        assert!(err.contains(want), "{text}: {err}");
    }
    assert!(env.container_ids().is_empty());
    // The project is named after its directory (networks are shared by
    // every --root of the host, so look for this project's only).
    let project: String = d
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let networks = env.ok(&["network", "ls"]);
    assert!(
        !networks.contains(&format!("{project}_default")),
        "{networks}"
    );
}

#[test]
fn up_without_detach_follows_the_output_and_ctrl_c_stops_the_services() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let env = Env::with_demo();
    let proj = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = proj.path();
    fs::write(
        d.join("compose.yaml"),
        "name: fg\nservices:\n  ticker:\n    image: demo\n    command: sh -c 'trap \"exit 0\" TERM; while true; do echo tick; sleep 0.2; done'\n  once:\n    image: demo\n    command: echo hello from once\n",
    )
    .unwrap();
    let mut child = env
        .cmd(&["compose", "up"])
        .current_dir(d)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        // Its own process group, as a terminal's foreground job is.
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while !(seen
        .iter()
        .any(|l: &String| l == "once    | hello from once")
        && seen.iter().filter(|l| *l == "ticker  | tick").count() >= 2)
    {
        seen.push(lines.next().expect("compose up ended early").unwrap());
    }
    // Ctrl-C reaches the whole foreground group.
    nix_kill_group(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let ps = env.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert!(
        ps.contains("fg-ticker-1 exited") && ps.contains("fg-once-1 exited"),
        "{ps}"
    );
    let down = env
        .cmd(&["compose", "down"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(down.status.success());
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

/// Profiles: a service with `profiles` starts only when one of them is
/// enabled (`--profile`, COMPOSE_PROFILES); one that depends on a
/// disabled service is refused; `down` removes every service's container.
#[test]
fn profiles_choose_the_services_that_start() {
    let env = Env::with_demo();
    let proj = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = proj.path();
    fs::write(
        d.join("compose.yaml"),
        "name: prof\nservices:\n  web:\n    image: demo\n    command: sleep 300\n  \
         debug:\n    image: demo\n    command: sleep 300\n    profiles: [tools]\n",
    )
    .unwrap();
    let running = || {
        let mut n: Vec<String> = env
            .ok(&["ps", "--format", "{{.Names}}"])
            .lines()
            .map(String::from)
            .collect();
        n.sort();
        n
    };
    assert!(compose(&env, d, 1, &["up", "-d"]).status.success());
    assert_eq!(running(), ["prof-web-1"]);
    let config = stdout(&compose(&env, d, 1, &["config"]));
    assert!(!config.contains("debug:"), "{config}");
    assert!(compose(&env, d, 1, &["--profile", "tools", "up", "-d"])
        .status
        .success());
    assert_eq!(running(), ["prof-debug-1", "prof-web-1"]);
    let config = stdout(&compose(&env, d, 1, &["--profile", "tools", "config"]));
    assert!(config.contains("debug:"), "{config}");
    assert!(compose(&env, d, 1, &["down"]).status.success());
    assert!(running().is_empty());

    // COMPOSE_PROFILES enables them too; a dependency on a disabled one
    // is refused before anything starts.
    fs::write(
        d.join("compose.yaml"),
        "name: prof\nservices:\n  web:\n    image: demo\n    command: sleep 300\n    depends_on: [debug]\n  \
         debug:\n    image: demo\n    command: sleep 300\n    profiles: [tools]\n",
    )
    .unwrap();
    let refused = compose(&env, d, 1, &["up", "-d"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("services.web.depends_on: debug is in profile(s) tools"),
        "{}",
        stderr(&refused)
    );
    assert!(running().is_empty());
    let up = env
        .cmd(&["compose", "up", "-d"])
        .current_dir(d)
        .env("COMPOSE_PROFILES", "other, tools")
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(running(), ["prof-debug-1", "prof-web-1"]);
    assert!(compose(&env, d, 1, &["down"]).status.success());
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

/// `up` again: a running service whose configuration changed is
/// recreated, an unchanged one is left running, as docker compose does;
/// containers carry docker compose's labels and the file's, beside the
/// image's (`ps --filter label=…`, inspect's Config.Labels).
#[test]
fn up_recreates_only_the_services_that_changed() {
    let env = Env::with_demo();
    let proj = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = proj.path();
    let write = |greeting: &str| {
        fs::write(
            d.join("compose.yaml"),
            format!(
                "name: rec\nservices:\n  web:\n    image: demo\n    command: sleep 300\n    \
                 environment: {{GREETING: {greeting}}}\n    labels: {{tier: front}}\n  \
                 db:\n    image: demo\n    command: sleep 300\n"
            ),
        )
        .unwrap()
    };
    write("hello");
    let up = compose(&env, d, 1, &["up", "-d"]);
    assert!(up.status.success(), "{}", stderr(&up));
    let id = |name: &str| env.ok(&["inspect", "-f", "{{.Id}}", name]);
    let (web, db) = (id("rec-web-1"), id("rec-db-1"));
    let again = compose(&env, d, 1, &["up", "-d"]);
    assert!(
        stderr(&again).contains("Container rec-web-1: running"),
        "{}",
        stderr(&again)
    );
    assert_eq!((id("rec-web-1"), id("rec-db-1")), (web.clone(), db.clone()));
    write("bye");
    let changed = compose(&env, d, 1, &["up", "-d"]);
    assert!(
        stderr(&changed).contains("Container rec-web-1: recreating"),
        "{}",
        stderr(&changed)
    );
    assert_ne!(id("rec-web-1"), web, "web was not recreated");
    assert_eq!(id("rec-db-1"), db, "db did not change");
    assert_eq!(
        env.ok(&["exec", "rec-web-1", "sh", "-c", "echo $GREETING"]),
        "bye\n"
    );
    let named = |filter: &str| env.ok(&["ps", "--filter", filter, "--format", "{{.Names}}"]);
    assert_eq!(named("label=com.docker.compose.service=web"), "rec-web-1\n");
    assert_eq!(named("label=tier"), "rec-web-1\n");
    assert_eq!(named("label=tier=back"), "");
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "rec-web-1"])).unwrap();
    let labels = &inspect[0]["Config"]["Labels"];
    assert_eq!(labels["tier"], "front", "{labels}");
    assert_eq!(labels["com.docker.compose.project"], "rec", "{labels}");
    assert!(
        labels["org.opencontainers.image.title"].is_string(),
        "the image's labels: {labels}"
    );
    // A service taken out of the file leaves an orphan: named by `up`,
    // removed with --remove-orphans.
    fs::write(
        d.join("compose.yaml"),
        "name: rec\nservices:\n  web:\n    image: demo\n    command: sleep 300\n    \
         environment: {GREETING: bye}\n    labels: {tier: front}\n",
    )
    .unwrap();
    let warned = compose(&env, d, 1, &["up", "-d"]);
    assert!(
        stderr(&warned).contains("Found orphan containers (rec-db-1)"),
        "{}",
        stderr(&warned)
    );
    assert_eq!(id("rec-db-1"), db, "an orphan is only named");
    let removed = compose(&env, d, 1, &["up", "-d", "--remove-orphans"]);
    assert!(
        stderr(&removed).contains("Container rec-db-1: removing orphan"),
        "{}",
        stderr(&removed)
    );
    assert_eq!(named("label=com.docker.compose.project=rec"), "rec-web-1\n");
    assert!(compose(&env, d, 1, &["down"]).status.success());
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

/// Secrets and configs from files or variables: mounted read-only,
/// secrets under /run/secrets and configs at /NAME unless a target says
/// otherwise; a variable's value is kept in the run directory (root's
/// alone) until `down`, and a new value recreates the container. One not
/// declared, whose file is missing or whose variable is unset, is one line
/// and starts nothing.
#[test]
fn secrets_and_configs_are_files_mounted_read_only() {
    let env = Env::with_demo();
    let proj = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = proj.path();
    fs::write(d.join("token.txt"), "s3cret\n").unwrap();
    fs::write(d.join("app.conf"), "threads=4\n").unwrap();
    fs::write(d.join(".env"), "API_KEY=k3y\n").unwrap();
    let file = "name: sec\nsecrets:\n  token: {file: ./token.txt}\n  api: {environment: API_KEY}\n\
                configs:\n  app: {file: ./app.conf}\nservices:\n  web:\n    image: demo\n    \
                command: sleep 300\n    secrets: [token, api]\n    \
                configs: [app, {source: app, target: /etc/app.conf}]\n";
    fs::write(d.join("compose.yaml"), file).unwrap();
    let up = compose(&env, d, 1, &["up", "-d"]);
    assert!(up.status.success(), "{}", stderr(&up));
    let seen = env.ok(&[
        "exec",
        "sec-web-1",
        "sh",
        "-c",
        "cat /run/secrets/token /app /etc/app.conf /run/secrets/api; echo; echo x > /run/secrets/token || echo read-only",
    ]);
    assert_eq!(seen, "s3cret\nthreads=4\nthreads=4\nk3y\nread-only\n");
    let values = env.path().join("run/compose/sec/secrets");
    let kept: Vec<_> = fs::read_dir(&values).unwrap().flatten().collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        kept[0].metadata().unwrap().permissions().mode() & 0o777,
        0o400
    );
    // A new value: the container is made again with it.
    fs::write(d.join(".env"), "API_KEY=n3w\n").unwrap();
    let again = compose(&env, d, 1, &["up", "-d"]);
    assert!(stderr(&again).contains("recreating"), "{}", stderr(&again));
    assert_eq!(
        env.ok(&["exec", "sec-web-1", "cat", "/run/secrets/api"]),
        "n3w"
    );
    assert!(compose(&env, d, 1, &["down"]).status.success());
    assert!(!values.exists(), "secret values left after down");
    for (bad, says) in [
        (
            file.replace("secrets: [token, api]", "secrets: [nope]"),
            "services.web.secrets: nope is not declared under the top-level secrets",
        ),
        (
            file.replace("./token.txt", "./gone.txt"),
            "secrets.token.file:",
        ),
        (
            file.replace("API_KEY}", "CAPSA_TEST_UNSET}"),
            "secrets.api.environment: CAPSA_TEST_UNSET is not set",
        ),
        (
            file.replace(
                "{environment: API_KEY}",
                "{environment: API_KEY, file: ./token.txt}",
            ),
            "secrets.api: give file or environment",
        ),
    ] {
        fs::write(d.join("compose.yaml"), bad).unwrap();
        let out = compose(&env, d, 1, &["up", "-d"]);
        assert!(!out.status.success(), "{says}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    }
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

/// Volumes as docker compose takes them: a missing host directory of the
/// short form is made, and of the long form unless `create_host_path` is
/// false; the long form's `read_only`, `bind.selinux` and
/// `volume.nocopy` reach the mount.
#[test]
fn volumes_make_missing_host_directories_and_take_options() {
    let env = Env::with_demo();
    let proj = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = proj.path();
    let file = "name: vols\nservices:\n  app:\n    image: demo\n    \
                command: sh -c 'echo made > /made/f; ls -A /home; touch /ro/x 2>/dev/null || echo read-only'\n    \
                volumes:\n      - ./made/deeper:/made\n      \
                - {type: volume, source: home, target: /home, volume: {nocopy: true}}\n      \
                - {type: bind, source: ./ro, target: /ro, read_only: true, bind: {selinux: z}}\n\
                volumes:\n  home:\n";
    fs::write(d.join("compose.yaml"), file).unwrap();
    let up = compose(&env, d, 1, &["up", "-d"]);
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(env.ok(&["wait", "vols-app-1"]).trim(), "0");
    assert_eq!(env.ok(&["logs", "vols-app-1"]), "read-only\n");
    assert_eq!(
        fs::read_to_string(d.join("made/deeper/f")).unwrap(),
        "made\n"
    );
    assert!(d.join("ro").is_dir());
    assert!(compose(&env, d, 1, &["down", "-v"]).status.success());

    let kept = file.replace(
        "bind: {selinux: z}",
        "bind: {selinux: z, create_host_path: false}",
    );
    fs::remove_dir(d.join("ro")).unwrap();
    fs::write(d.join("compose.yaml"), kept).unwrap();
    let out = compose(&env, d, 1, &["up", "-d"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!d.join("ro").exists());
    assert!(compose(&env, d, 1, &["down", "-v"]).status.success());
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

fn nix_kill_group(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// `scale`, `deploy.replicas` and `up --scale` (#14): a container per
/// replica (`PROJECT-SERVICE-N`), each answering to the service's name on
/// the project's network; scaled down, the last ones go and the first
/// keeps running; `exec --index`, `ps` and `logs` per replica; `down`
/// removes them all.
#[test]
fn services_scale_to_replicas() {
    let env = Env::with_demo();
    let proj = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = proj.path();
    fs::write(
        d.join("compose.yaml"),
        "name: scaled\nservices:\n  web:\n    image: demo\n    command: [sh, -c, 'echo up; exec sleep 300']\n    deploy: {replicas: 3}\n  client:\n    image: demo\n    command: sleep 300\n",
    )
    .unwrap();
    let run = |args: &[&str]| compose(&env, d, 1, args);
    let up = run(&["up", "-d"]);
    assert!(up.status.success(), "{}", stderr(&up));
    let ps = stdout(&run(&["ps"]));
    for n in [
        "scaled-web-1",
        "scaled-web-2",
        "scaled-web-3",
        "scaled-client-1",
    ] {
        assert!(ps.contains(n), "{ps}");
    }
    // The service's name resolves to every replica.
    let addresses = |out: &str| -> std::collections::BTreeSet<String> {
        out.lines()
            .skip_while(|l| !l.starts_with("Name:"))
            .filter_map(|l| l.strip_prefix("Address:"))
            .map(|a| a.trim().to_string())
            .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
            .collect()
    };
    let look = stdout(&run(&[
        "exec", "-T", "client", "nslookup", "-type=a", "web",
    ]));
    assert_eq!(addresses(&look).len(), 3, "{look}");
    let host = |i: &str| stdout(&run(&["exec", "-T", "--index", i, "web", "hostname"]));
    assert_ne!(host("1"), host("3"));
    let out = run(&["exec", "-T", "--index", "4", "web", "true"]);
    assert!(
        stderr(&out).contains("--index 4: service web has 3"),
        "{}",
        stderr(&out)
    );
    let logs = stdout(&run(&["logs", "web"]));
    for i in 1..=3 {
        assert!(logs.contains(&format!("web-{i}  | up")), "{logs}");
    }

    let bad = run(&["up", "-d", "--scale", "web=many"]);
    assert_eq!(stderr(&bad).trim().lines().count(), 1, "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("--scale web=many"),
        "{}",
        stderr(&bad)
    );
    let down1 = run(&["up", "-d", "--scale", "web=1"]);
    let said = stderr(&down1);
    assert!(down1.status.success(), "{said}");
    assert!(
        said.contains("Container scaled-web-3: removing (scaled down)")
            && said.contains("Container scaled-web-2: removing (scaled down)")
            && said.contains("Container scaled-web-1: running"),
        "{said}"
    );
    let ps = stdout(&run(&["ps"]));
    assert!(
        ps.contains("scaled-web-1") && !ps.contains("scaled-web-2"),
        "{ps}"
    );

    let down = run(&["down"]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(env.container_ids().is_empty());
    assert!(!env.ok(&["network", "ls"]).contains("scaled_"));
    env.assert_no_leaks(&[]);
}
