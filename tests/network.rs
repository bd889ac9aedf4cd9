//! Container networks with real traffic (issue #11): bridges, published
//! ports, names, isolation and cleanup, through the `capsa` command line.
//!
//! Every test runs capsa inside a network namespace of its own (`HostNs`),
//! which stands for the host: netavark's bridges, firewall rules and
//! aardvark-dns live and die in it, a veth with 192.0.2.10 is "the host's
//! other address" (this kernel has no dummy driver), and a veth to a second namespace
//! (198.51.100.0/24) is "the outside". No packet leaves these namespaces.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use capsa_tests::{capsa_bin, code, stderr, stdout, Env};

/// A network namespace standing for the host, with the demo image in a
/// private capsa root.
struct HostNs {
    env: Env,
    name: String,
}

impl HostNs {
    fn new() -> HostNs {
        let env = Env::with_demo();
        let tag = env
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("capsa-test-", "");
        let name = format!("capsa-t-{tag}");
        sh_ok(&format!(
            "ip netns add {name} && ip -n {name} link set lo up && \
             ip -n {name} link add addr0 type veth peer name addr1 && \
             ip -n {name} addr add 192.0.2.10/24 dev addr0 && \
             ip -n {name} link set addr0 up && ip -n {name} link set addr1 up"
        ));
        HostNs { env, name }
    }

    /// `capsa ARGS` in this namespace.
    fn capsa(&self, args: &[&str]) -> Output {
        capsa_in(&self.name, self.env.path(), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.capsa(args);
        assert!(
            out.status.success(),
            "capsa {args:?} failed ({:?}):\n{}{}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// A shell command in this namespace.
    fn sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("run sh")
    }

    /// An HTTP GET from this namespace, retried while the server starts.
    fn get(&self, url: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.sh(&format!("curl -sS --max-time 3 {url}"));
            if out.status.success() || Instant::now() > deadline {
                assert!(out.status.success(), "GET {url}: {}", stderr(&out));
                return stdout(&out);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A web server container serving `page` on port 80.
    fn web(&self, extra: &[&str], page: &str) -> String {
        let script = format!(
            "mkdir -p /www && echo {page} > /www/index.html && exec httpd -f -p 80 -h /www"
        );
        let mut args = vec!["run", "-d"];
        args.extend(extra);
        args.extend(["demo", "sh", "-c", &script]);
        self.ok(&args).trim().to_string()
    }

    /// What of capsa's networking is left in this namespace and root.
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        // The default network's bridge stays up once made, as docker0 does:
        // it, its holder port and the network's own NAT, forward and
        // loopback-guard rules are not leftovers; a container's are.
        let standing = self.default_bridge_subnet();
        let links = stdout(&self.sh("ip -o link show"));
        for l in links.lines() {
            let name = l.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or(name);
            let kept = standing.is_some() && (name == "capsa0" || name == "capsa0-keep");
            if !(kept || name == "lo" || name.starts_with("addr") || name == "out0") {
                out.push(format!("link {name}"));
            }
        }
        let rules = stdout(&self.sh("iptables-save"));
        for l in rules.lines() {
            let kept = standing.as_ref().is_some_and(|net| {
                (l.contains(net.as_str()) && !l.contains("--dport"))
                    || (l.contains("-i capsa0 ") && l.contains("capsa: no host loopback"))
            });
            if !kept && (l.contains("10.89.") || l.contains("NETAVARK-DN-") || l.contains("capsa:"))
            {
                out.push(format!("firewall rule {l}"));
            }
        }
        for ns in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = ns.file_name().to_string_lossy().into_owned();
            if self
                .env
                .container_ids()
                .iter()
                .any(|id| n == format!("capsa-{id}"))
            {
                out.push(format!("netns {n}"));
            }
        }
        let state = self.net_state();
        for f in state
            .iter()
            .flat_map(|d| capsa_tests::files_under(&d.join("net/ipam")))
        {
            let n = f.file_name().unwrap().to_string_lossy().into_owned();
            if n != "lock" && !n.starts_with("last_reserved_ip") {
                out.push(format!("lease {}", f.display()));
            }
        }
        let ps = Command::new("pgrep")
            .args(["-af", "aardvark-dns"])
            .output()
            .unwrap();
        for l in stdout(&ps).lines() {
            if state
                .as_ref()
                .is_some_and(|d| l.contains(&d.display().to_string()))
            {
                out.push(format!("process {l}"));
            }
        }
        out
    }

    /// The default bridge's subnet (`10.89.N.0/24`) if it is kept up here:
    /// `capsa0` with its holder port `capsa0-keep` attached.
    fn default_bridge_subnet(&self) -> Option<String> {
        let holder = stdout(&self.sh("ip -o link show dev capsa0-keep"));
        if !holder.contains("master capsa0 ") {
            return None;
        }
        let addr = stdout(&self.sh("ip -o -4 addr show dev capsa0"));
        let cidr = addr
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)?;
        let (ip, len) = cidr.split_once('/')?;
        let (ip, len): (std::net::Ipv4Addr, u32) = (ip.parse().ok()?, len.parse().ok()?);
        let net = u32::from(ip) & u32::MAX.checked_shl(32 - len).unwrap_or(0);
        Some(format!("{}/{len}", std::net::Ipv4Addr::from(net)))
    }

    /// capsa's network state for this namespace: networks belong to the
    /// namespace, not to the root (capsa_network::Paths::of_this_netns
    /// names the directory by the namespace's inode and cookie).
    fn net_state(&self) -> Option<std::path::PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/run/netns/{}", self.name))
            .ok()?
            .ino();
        std::fs::read_dir("/run/capsa/netns")
            .ok()?
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{ino}-"))
            })
            .map(|e| e.path())
    }

    fn assert_clean(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

impl Drop for HostNs {
    fn drop(&mut self) {
        for id in self.env.container_ids() {
            let _ = self.capsa(&["rm", "-f", &id]);
        }
        if let Some(state) = self.net_state() {
            let _ = std::fs::remove_dir_all(state);
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A shell script that GETs `url` (`http://NAME_OR_IP[:PORT]/PATH`) from
/// inside a demo container and prints the body. The demo image's static
/// busybox cannot use libc's resolver or even wget (both crash without NSS
/// modules), so the name is looked up with nslookup, which asks the
/// container's resolver (aardvark-dns on user networks), and the request
/// is made with nc.
fn http_get(url: &str) -> String {
    let rest = url.trim_start_matches("http://");
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (name, port) = hostport.split_once(':').unwrap_or((hostport, "80"));
    format!(
        "ip=$(nslookup {name} 2>/dev/null | sed -n 's/^Address: //p' | tail -1); \
         [ -n \"$ip\" ] || ip={name}; \
         printf 'GET /{path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip {port} | sed '1,/^\\r$/d'"
    )
}

/// `capsa --root ROOT ARGS` in network namespace `ns`.
fn capsa_in(ns: &str, root: &std::path::Path, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(capsa_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run capsa")
}

/// `capsa run --rm FLAGS demo` in namespace `ns`, all at once, one per
/// (root, flags); each prints its eth0 address. Returns the distinct ones.
fn concurrent_addresses<'a>(
    ns: &str,
    runs: impl Iterator<Item = (&'a std::path::Path, Vec<String>)>,
) -> Vec<String> {
    let handles: Vec<_> = runs
        .map(|(root, flags)| {
            let (ns, root) = (ns.to_string(), root.to_path_buf());
            std::thread::spawn(move || {
                let mut args = vec!["run", "--rm"];
                args.extend(flags.iter().map(String::as_str));
                args.extend(["demo", "sh", "-c", "ip -4 -o addr show eth0"]);
                capsa_in(&ns, &root, &args)
            })
        })
        .collect();
    let mut ips: Vec<String> = handles
        .into_iter()
        .map(|h| {
            let o = h.join().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            stdout(&o).split_whitespace().nth(3).unwrap().to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn sh_ok(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn published_tcp_port_answers_on_loopback_and_other_addresses() {
    let host = HostNs::new();
    let id = host.web(&["-p", "8080:80", "--name", "web"], "hello-from-web");
    assert_eq!(host.get("http://127.0.0.1:8080/"), "hello-from-web\n");
    assert_eq!(host.get("http://192.0.2.10:8080/"), "hello-from-web\n");
    assert_eq!(host.ok(&["port", "web"]), "80/tcp -> 0.0.0.0:8080\n");
    assert!(
        host.ok(&["ps"]).contains("0.0.0.0:8080->80/tcp"),
        "ps shows the port"
    );
    let inspect: serde_json::Value = serde_json::from_str(&host.ok(&["inspect", "web"])).unwrap();
    let settings = &inspect[0]["NetworkSettings"];
    assert_eq!(
        settings["Ports"]["80/tcp"][0],
        serde_json::json!({"HostIp": "0.0.0.0", "HostPort": "8080"}),
        "{settings}"
    );
    let bridge = &settings["Networks"]["bridge"];
    assert!(
        bridge["IPAddress"].as_str().unwrap().starts_with("10.89.")
            && bridge["Gateway"].as_str().unwrap().starts_with("10.89.")
            && bridge["IPPrefixLen"] == 24,
        "{settings}"
    );

    // The port is held: a second container cannot take it, and nothing of
    // the failed run is left.
    let out = host.capsa(&["run", "-d", "-p", "8080:80", "demo", "true"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("8080") && stderr(&out).contains("already in use"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        host.env.container_ids().len(),
        2,
        "the failed container stays listed, as docker's"
    );

    host.ok(&["rm", "-f", &id]);
    for c in host.env.container_ids() {
        host.ok(&["rm", "-f", &c]);
    }
    // The default bridge outlives its last container (docker0's way), so
    // the next run does not pay for making it again; the container's own
    // interface, address, port rules and lease are gone.
    assert!(
        host.default_bridge_subnet().is_some(),
        "the default bridge was not kept up: {}",
        stdout(&host.sh("ip -o link show"))
    );
    // Deleted by hand, the bridge is made again by the next run, and its
    // holder (left behind, detached) joins it again.
    host.sh("ip link delete capsa0");
    host.ok(&["run", "--rm", "demo", "true"]);
    assert!(
        host.default_bridge_subnet().is_some(),
        "the remade bridge has no holder: {}",
        stdout(&host.sh("ip -o link show"))
    );
    host.assert_clean();
    host.env.assert_no_leaks(&[id]);
}

#[test]
fn free_host_ports_and_udp() {
    let host = HostNs::new();
    // -p CTRPORT picks a free host port; a UDP port is published and held
    // too, and a UDP server in the container answers through it.
    let udp = capsa_tests::helpers_dir();
    let vol = format!("{}:/opt/udp:ro", udp.path().display());
    let id = host.ok(&[
        "run",
        "-d",
        "-p",
        "80",
        "-p",
        "127.0.0.1:5353:53/udp",
        "-v",
        &vol,
        "demo",
        "sh",
        "-c",
        "/opt/udp/udp_echo serve 53 & mkdir /www && echo any > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let id = id.trim();
    let port = host.ok(&["port", id, "80/tcp"]);
    let (ip, port) = port.trim().rsplit_once(':').unwrap();
    assert_eq!(ip, "0.0.0.0");
    assert!(port.parse::<u16>().unwrap() > 1024, "a free port: {port}");
    assert_eq!(host.get(&format!("http://127.0.0.1:{port}/")), "any\n");
    assert_eq!(host.ok(&["port", id, "53/udp"]), "127.0.0.1:5353\n");
    let held = stdout(&host.sh("ss -Huln"));
    assert!(
        held.contains("127.0.0.1:5353"),
        "the UDP port is not held: {held}"
    );
    let asked = host.sh(&format!(
        "{}/udp_echo ask 127.0.0.1 5353 ping",
        udp.path().display()
    ));
    assert_eq!(stdout(&asked), "echo:ping\n", "{}", stderr(&asked));
    host.ok(&["rm", "-f", id]);
    host.assert_clean();
}

#[test]
fn names_resolve_on_a_user_network_and_networks_are_isolated() {
    let host = HostNs::new();
    host.ok(&["network", "create", "n1"]);
    let n2 = host.ok(&["network", "create", "--subnet", "10.89.200.0/24", "n2"]);
    let a = host.web(
        &["--network", "n1", "--name", "a", "--network-alias", "www"],
        "from-a",
    );
    let b = host.web(&["--network", "n1", "--name", "b"], "from-b");
    let fetch = |from: &str, url: &str| host.capsa(&["exec", from, "sh", "-c", &http_get(url)]);
    // By name and by alias, retried while a's server starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stdout(&fetch(&b, "http://a/")).contains("from-a") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(stdout(&fetch(&b, "http://a/")), "from-a\n");
    assert_eq!(stdout(&fetch(&b, "http://www/")), "from-a\n");

    let inspect: serde_json::Value =
        serde_json::from_str(&host.ok(&["network", "inspect", "n1"])).unwrap();
    let a_ip = inspect[0]["Containers"][&a]["IPv4Address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(a_ip.starts_with("10.89."), "{inspect}");

    // A container on n2 reaches neither a's address nor its name.
    // Joined by an ID prefix, as docker allows.
    let c = host.web(&["--network", &n2.trim()[..12], "--name", "c"], "from-c");
    let out = fetch(&c, &format!("http://{a_ip}/"));
    assert!(
        !stdout(&out).contains("from-a"),
        "n2 reached n1: {}",
        stdout(&out)
    );
    assert_eq!(
        stdout(&fetch(&c, "http://c/")),
        "from-c\n",
        "c's own network works"
    );
    let out = host.capsa(&["exec", &c, "nslookup", "a"]);
    assert!(
        !stdout(&out).contains(&a_ip),
        "n2 resolved n1's name: {}",
        stdout(&out)
    );

    // In use: not removable; afterwards removed and pruned.
    let out = host.capsa(&["network", "rm", "n2"]);
    assert!(
        stderr(&out).contains("in use by container c"),
        "{}",
        stderr(&out)
    );
    let out = host.capsa(&["network", "rm", "n1"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    for id in [&a, &b, &c] {
        host.ok(&["rm", "-f", id]);
    }
    host.ok(&["network", "rm", "n1"]);
    assert!(host.ok(&["network", "prune", "-f"]).contains("n2"));
    let ls = host.ok(&["network", "ls"]);
    assert!(
        !ls.contains("n1") && !ls.contains("n2") && ls.contains("bridge"),
        "{ls}"
    );
    host.assert_clean();
}

#[test]
fn egress_is_masqueraded_and_host_loopback_is_out_of_reach() {
    let host = HostNs::new();
    // "The outside": a namespace behind a veth, with a server on it.
    let outside = format!("{}-o", host.name);
    sh_ok(&format!(
        "ip netns add {outside} && ip -n {outside} link set lo up && \
         ip -n {n} link add out0 type veth peer name out1 netns {outside} && \
         ip -n {n} addr add 198.51.100.1/24 dev out0 && ip -n {n} link set out0 up && \
         ip -n {outside} addr add 198.51.100.2/24 dev out1 && ip -n {outside} link set out1 up",
        n = host.name
    ));
    let _cleanup = scopeguard(outside.clone());
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &outside,
            "busybox",
            "nc",
            "-l",
            "-p",
            "7000",
            "-e",
            "sh",
            "-c",
            "netstat -tn | grep :7000",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = host.capsa(&[
        "run",
        "--rm",
        "--network",
        "bridge",
        "demo",
        "sh",
        "-c",
        "nc -w 3 198.51.100.2 7000 </dev/null",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The outside saw the host's address, not the container's.
    assert!(
        stdout(&out).contains("198.51.100.2:7000") && stdout(&out).contains("198.51.100.1:"),
        "not masqueraded: {}",
        stdout(&out)
    );
    drop(server);

    // A loopback-only service on the host is not reachable, not even with
    // a route crafted in the container's namespace (what a container with
    // CAP_NET_RAW can do with hand-made frames; done here as root in its
    // namespace).
    let www = host.env.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "secret\n").unwrap();
    let mut listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.name,
            "busybox",
            "httpd",
            "-f",
            "-p",
            "127.0.0.1:9999",
            "-h",
        ])
        .arg(&www)
        .spawn()
        .unwrap();
    // The service is there for the host itself.
    assert_eq!(host.get("http://127.0.0.1:9999/"), "secret\n");
    // A published port on the bridge is what turns on route_localnet there.
    let id = host.ok(&["run", "-d", "-p", "8083:80", "demo", "sleep", "60"]);
    let id = id.trim();
    // Another container on the bridge that comes and goes leaves the guard
    // in place for the one that stays.
    host.ok(&["run", "--rm", "demo", "true"]);
    let gw = stdout(&host.sh(&format!("ip -n capsa-{id} route show default")))
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let out = host.sh(&format!(
        "ip -n capsa-{id} route del local 127.0.0.0/8 dev lo table local; \
         ip -n capsa-{id} route del local 127.0.0.1 dev lo table local; \
         ip netns exec capsa-{id} sysctl -qw net.ipv4.conf.eth0.route_localnet=1; \
         ip -n capsa-{id} route add 127.0.0.1/32 via {gw}; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | ip netns exec capsa-{id} busybox nc -w 2 127.0.0.1 9999"
    ));
    assert!(
        !stdout(&out).contains("secret"),
        "reached the host's loopback: {}",
        stdout(&out)
    );
    let out = host.capsa(&[
        "exec",
        id,
        "sh",
        "-c",
        &http_get(&format!("http://{gw}:9999/")),
    ]);
    assert!(
        stderr(&out).is_empty() || !stderr(&out).contains("not found"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stdout(&out).contains("secret"),
        "reached the host's loopback: {}",
        stdout(&out)
    );
    let _ = listener.kill();
    let _ = listener.wait();
    host.ok(&["rm", "-f", id]);
    host.assert_clean();
}

/// `--add-host NAME:host-gateway` names the host as the container reaches
/// it: its network's gateway, where a host service on all addresses
/// answers; 127.0.0.1 on the host's network; refused without a network.
#[test]
fn host_gateway_names_the_host() {
    let host = HostNs::new();
    let www = host.env.path().join("www-gw");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "from-the-host\n").unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &host.name, "busybox", "httpd", "-f", "-p", "9997", "-h",
        ])
        .arg(&www)
        .spawn()
        .unwrap();
    assert_eq!(host.get("http://127.0.0.1:9997/"), "from-the-host\n");
    // The static busybox cannot read /etc/hosts through libc: awk does.
    let fetch = "ip=$(awk '$2 == \"hgw\" {print $1}' /etc/hosts); echo \"$ip\"; \
        printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip 9997 | sed '1,/^\\r$/d'";
    let out = host.ok(&[
        "run",
        "--rm",
        "--network",
        "bridge",
        "--add-host",
        "hgw:host-gateway",
        "demo",
        "sh",
        "-c",
        fetch,
    ]);
    let (ip, body) = out.split_once('\n').unwrap();
    assert!(ip.starts_with("10.89.") && ip.ends_with(".1"), "{out}");
    assert_eq!(body, "from-the-host\n", "{out}");
    let out = host.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--add-host",
        "hgw:host-gateway",
        "demo",
        "grep",
        "hgw",
        "/etc/hosts",
    ]);
    assert_eq!(out, "127.0.0.1\thgw\n");
    let out = host.capsa(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--add-host",
        "hgw:host-gateway",
        "demo",
        "true",
    ]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("host-gateway needs a network"),
        "{}",
        stderr(&out)
    );
    let _ = server.kill();
    let _ = server.wait();
    host.assert_clean();
}

/// Deletes the namespace `name` at the end of a test.
fn scopeguard(name: String) -> impl Drop {
    struct G(String);
    impl Drop for G {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    G(name)
}

#[test]
fn internal_networks_have_no_egress_and_addresses_are_unique() {
    let host = HostNs::new();
    host.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.89.50.0/24",
        "priv",
    ]);
    let out = host.capsa(&[
        "run",
        "--rm",
        "--network",
        "priv",
        "demo",
        "sh",
        "-c",
        "ip route; nc -w 2 192.0.2.10 80 </dev/null",
    ]);
    assert_ne!(
        code(&out),
        0,
        "an internal network reached the host: {}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("10.89.50.0/24") && !stdout(&out).contains("default"),
        "an internal network has a default route: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("unreachable"),
        "not refused for want of a route: {}",
        stderr(&out)
    );

    // --ip, --mac-address and --hostname are what the container sees.
    let out = host.ok(&[
        "run", "--rm", "--network", "priv", "--ip", "10.89.50.50", "--mac-address", "02:42:0a:59:00:32",
        "--hostname", "box", "demo", "sh", "-c",
        "cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; cat /etc/hostname; grep box /etc/hosts",
    ]);
    assert!(
        out.contains("02:42:0a:59:00:32") && out.contains("10.89.50.50/24"),
        "{out}"
    );
    assert!(out.contains("10.89.50.50\tbox"), "{out}");

    // Parallel runs get distinct addresses; afterwards no lease is left.
    let root = host.env.path();
    let runs = (0..8).map(|_| (root, vec!["--network".to_string(), "priv".into()]));
    let ips = concurrent_addresses(&host.name, runs);
    assert_eq!(ips.len(), 8, "duplicate addresses: {ips:?}");
    host.assert_clean();
}

/// Networks belong to the network namespace, not to a `--root`, as
/// podman's serve every root: two roots publishing ports on the default
/// bridge at once (one bridge, one set of firewall chains) all succeed
/// with distinct addresses and leave nothing behind; a root sees the
/// other's networks and cannot remove one that the other's container uses.
#[test]
fn every_root_shares_the_namespaces_networks() {
    let host = HostNs::new();
    let other = Env::with_demo();
    let in_other = |args: &[&str]| capsa_in(&host.name, other.path(), args);
    host.ok(&["network", "create", "shared"]);
    assert!(stdout(&in_other(&["network", "ls"])).contains("shared"));
    let out = in_other(&[
        "run",
        "-d",
        "--name",
        "b",
        "--network",
        "shared",
        "demo",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = host.capsa(&["network", "rm", "shared"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in use by container") && stderr(&out).contains("another --root"),
        "{}",
        stderr(&out)
    );
    assert!(!host.ok(&["network", "prune", "-f"]).contains("shared"));

    // Before, each root had its own `bridge` with its own leases on the one
    // capsa0: runs collided on addresses and on netavark's chains.
    let roots = [host.env.path(), other.path()];
    let runs = (0..6).map(|i| {
        (
            roots[i % 2],
            vec!["-p".to_string(), format!("{}:80", 18_100 + i)],
        )
    });
    let ips = concurrent_addresses(&host.name, runs);
    assert_eq!(ips.len(), 6, "duplicate addresses: {ips:?}");

    let out = in_other(&["rm", "-f", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    host.ok(&["network", "rm", "shared"]);
    host.assert_clean();
}

#[test]
fn bad_network_input_is_refused_in_one_line_and_makes_nothing() {
    let host = HostNs::new();
    for (args, why) in [
        (
            vec!["run", "--rm", "--network", "nosuch", "demo", "true"],
            "network nosuch not found",
        ),
        (
            vec!["run", "--rm", "-p", "70000:80", "demo", "true"],
            "not a port number",
        ),
        (
            vec!["run", "--rm", "-p", "80:80/icmp", "demo", "true"],
            "unsupported protocol",
        ),
        (
            vec![
                "run",
                "--rm",
                "--network",
                "none",
                "-p",
                "80",
                "demo",
                "true",
            ],
            "needs a network",
        ),
        (
            vec![
                "run",
                "--rm",
                "--network",
                "bridge",
                "--ip",
                "192.168.7.7",
                "demo",
                "true",
            ],
            "not a free host address",
        ),
        (
            vec![
                "run",
                "--rm",
                "--isolation",
                "vm",
                "--network",
                "host",
                "demo",
                "true",
            ],
            "--network host cannot be given to a VM-mode container",
        ),
        (
            vec!["network", "create", "--subnet", "10.0.0.0/33", "x"],
            "invalid subnet",
        ),
        (vec!["network", "rm", "bridge"], "cannot be removed"),
    ] {
        let out = host.capsa(&args);
        assert_eq!(code(&out), 125, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(why), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
    }
    assert!(host.env.container_ids().is_empty() || host.ok(&["ps", "-a", "-q"]).trim().is_empty());
    host.assert_clean();
}

#[test]
fn a_killed_monitor_leaves_no_network_behind() {
    let host = HostNs::new();
    let id = host.web(&["-p", "8082:80"], "up");
    assert_eq!(host.get("http://127.0.0.1:8082/"), "up\n");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            host.env
                .path()
                .join("containers")
                .join(&id)
                .join("record.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let monitor = record["monitor_pid"].as_i64().expect("a monitor pid") as i32;
    sh_ok(&format!("kill -9 {monitor}"));
    // Its keeper collects the container's exit and tears the network down.
    host.ok(&["stop", "-t", "1", &id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !host.leftovers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    host.assert_clean();
    host.ok(&["rm", &id]);
    host.env.assert_no_leaks(&[id]);
}

#[test]
fn a_container_shares_another_containers_network() {
    let host = HostNs::new();
    let web = host.web(
        &["--name", "web", "-p", "8083:80", "--hostname", "websrv"],
        "shared",
    );
    assert_eq!(host.get("http://127.0.0.1:8083/"), "shared\n");
    // Its interface, its address, its hostname and /etc files; its
    // server on the shared loopback.
    let show = "ip -4 -o addr show eth0 | awk '{print $4}'; hostname; cat /etc/hosts";
    let theirs = host.ok(&["exec", "web", "sh", "-c", show]);
    let out = host.ok(&[
        "run",
        "--rm",
        "--network",
        "container:web",
        "demo",
        "sh",
        "-c",
        &format!("{show}; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 80 | tail -1"),
    ]);
    assert_eq!(out, format!("{theirs}shared\n"));
    assert!(
        theirs.contains("10.89.") && theirs.contains("websrv"),
        "{theirs}"
    );

    // Refused in one line: network flags of its own, VM mode, a container
    // that does not run.
    host.ok(&["run", "--name", "done", "demo", "true"]);
    for (args, why) in [
        (
            vec!["-p", "81:80"],
            "-p/-P cannot be used with --network container:web",
        ),
        (vec!["--hostname", "x"], "--hostname cannot be used"),
        (
            vec!["--isolation", "vm"],
            "cannot be given to a VM-mode container",
        ),
    ] {
        let mut all = vec!["run", "--rm", "--network", "container:web"];
        all.extend(args);
        all.extend(["demo", "true"]);
        let out = host.capsa(&all);
        assert_eq!(code(&out), 125, "{all:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{all:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    }
    for (other, why) in [
        ("done", "done is not running"),
        ("nosuch", "container:nosuch"),
    ] {
        let out = host.capsa(&[
            "run",
            "--rm",
            "--network",
            &format!("container:{other}"),
            "demo",
            "true",
        ]);
        assert_eq!(code(&out), 125, "{}", stderr(&out));
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }
    host.ok(&["rm", "done"]);
    host.ok(&["rm", "-f", &web]);
    assert!(host.ok(&["ps", "-a", "-q"]).trim().is_empty());
    host.assert_clean();
}

#[test]
fn a_running_container_is_connected_and_disconnected() {
    let host = HostNs::new();
    host.ok(&["network", "create", "--subnet", "10.89.210.0/24", "m1"]);
    host.ok(&["network", "create", "--subnet", "10.89.211.0/24", "m2"]);
    let a = host.web(&["--network", "m1", "--name", "a"], "from-a");
    let b = host.web(&["--network", "m2", "--name", "b"], "from-b");
    let fetch =
        |from: &str, url: &str| stdout(&host.capsa(&["exec", from, "sh", "-c", &http_get(url)]));
    let eventually = |from: &str, url: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while fetch(from, url) != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(fetch(from, url), want, "{from} → {url}");
    };
    let ip_of = |ctr: &str, dev: &str| {
        host.ok(&[
            "exec",
            ctr,
            "sh",
            "-c",
            &format!("ip -4 -o addr show {dev} | awk '{{print $4}}' | cut -d/ -f1"),
        ])
        .trim()
        .to_string()
    };
    let a_ip = ip_of(&a, "eth0");
    eventually(&a, "http://a/", "from-a\n");
    assert!(
        !fetch(&b, &format!("http://{a_ip}/")).contains("from-a"),
        "m2 reached m1"
    );

    host.ok(&["network", "connect", "--alias", "www", "m1", "b"]);
    // b has an eth1 on m1: it reaches a, and a finds it by name and alias.
    let b_ip = ip_of(&b, "eth1");
    assert!(b_ip.starts_with("10.89.210."), "{b_ip}");
    eventually(&b, &format!("http://{a_ip}/"), "from-a\n");
    eventually(&a, "http://b/", "from-b\n");
    eventually(&a, "http://www/", "from-b\n");
    let inspect = host.ok(&["network", "inspect", "m1"]);
    assert!(inspect.contains(&b_ip), "{inspect}");
    let out = host.capsa(&["network", "rm", "m1"]);
    assert!(
        stderr(&out).contains("in use by container"),
        "{}",
        stderr(&out)
    );

    for (args, why) in [
        (
            vec!["network", "connect", "m1", "b"],
            "already connected to network m1",
        ),
        (vec!["network", "connect", "nosuch", "b"], "nosuch"),
        (
            vec!["network", "disconnect", "m2", "a"],
            "not connected to network m2",
        ),
    ] {
        let out = host.capsa(&args);
        assert_eq!(code(&out), 125, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    }
    let lone = host.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "lone",
        "demo",
        "sleep",
        "60",
    ]);
    let out = host.capsa(&["network", "connect", "m1", "lone"]);
    assert!(
        stderr(&out).contains("no networks of its own"),
        "{}",
        stderr(&out)
    );

    host.ok(&["network", "disconnect", "m1", "b"]);
    let links = host.ok(&["exec", &b, "ip", "-o", "link"]);
    assert!(!links.contains("eth1"), "{links}");
    assert!(
        !fetch(&b, &format!("http://{a_ip}/")).contains("from-a"),
        "still on m1"
    );
    eventually(&b, "http://b/", "from-b\n");
    let inspect = host.ok(&["network", "inspect", "m1"]);
    assert!(!inspect.contains(&b_ip), "{inspect}");
    // Connected again, then torn down whole when it is removed.
    host.ok(&["network", "connect", "m1", "b"]);
    for id in [&a, &b, &lone] {
        host.ok(&["rm", "-f", id.trim()]);
    }
    host.ok(&["network", "rm", "m1", "m2"]);
    host.assert_clean();
}
