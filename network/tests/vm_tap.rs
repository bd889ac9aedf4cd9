//! A VM's tap joined to a network namespace (capsa_network::vm), with a
//! real tap, veth and nftables, and this test playing the VM on the tap's
//! descriptor: the network's frames reach the VM, the VM's own frames reach
//! the network, and frames with another MAC or address never do. Needs
//! root; runs in two namespaces it makes and removes.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;

const MAC: &str = "02:42:0a:4d:00:02";
const OTHER_MAC: &str = "02:42:0a:4d:00:63";

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Namespaces(String, String);
impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.1])
            .status();
    }
}

fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap())
        .collect()
}

/// An ARP request (who has `target`? tell `sender_ip`), as the guest's
/// driver hands it over: a zero vnet header, then the frame.
fn arp_request(src_mac: &str, sender_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mac = mac_bytes(src_mac);
    let mut f = vec![0u8; 12];
    f.extend([0xff; 6]);
    f.extend(&mac);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend(&mac);
    f.extend(sender_ip);
    f.extend([0; 6]);
    f.extend(target);
    f
}

/// The next frame the tap gives the VM within `ms`, without its header.
fn read_frame(tap: &mut std::fs::File, ms: i32) -> Option<Vec<u8>> {
    let mut p = libc::pollfd {
        fd: tap.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, ms) } != 1 {
        return None;
    }
    let mut buf = vec![0u8; 65_600];
    let n = tap.read(&mut buf).ok()?;
    Some(buf[12..n].to_vec())
}

/// The ARP replies the VM gets within `ms` (IPv6 chatter aside).
fn arp_replies(tap: &mut std::fs::File, ms: u64) -> Vec<Vec<u8>> {
    let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match read_frame(tap, left.as_millis() as i32) {
            Some(f) if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[21] == 2 => out.push(f),
            Some(_) => {}
            None => break,
        }
    }
    out
}

fn neighbour(ns: &str, ip: &str) -> String {
    neighbour_on(ns, ip, "peer0")
}

fn neighbour_on(ns: &str, ip: &str, dev: &str) -> String {
    sh(&format!("ip -n {ns} neigh show {ip} dev {dev}"))
}

#[test]
fn a_vm_tap_passes_the_networks_frames_and_only_the_vms_own() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, taps, nftables)"
    );
    let tag = std::process::id();
    let (ns, peer) = (format!("capsa-vmtap-{tag}"), format!("capsa-vmpeer-{tag}"));
    let _cleanup = Namespaces(ns.clone(), peer.clone());
    sh(&format!(
        "ip netns add {ns} && ip netns add {peer} && \
         ip -n {ns} link add eth0 address {MAC} type veth peer name peer0 netns {peer} && \
         ip -n {ns} addr add 10.77.0.2/24 dev eth0 && ip -n {ns} link set eth0 up && \
         ip -n {ns} route add default via 10.77.0.1 && \
         ip -n {peer} addr add 10.77.0.1/24 dev peer0 && ip -n {peer} link set peer0 up"
    ));
    let netns = std::path::PathBuf::from(format!("/run/netns/{ns}"));
    let (mut nics, routes) = capsa_network::vm::join(&netns).unwrap();

    // The guest is told what the namespace has.
    assert_eq!(nics.len(), 1);
    let nic = &nics[0];
    assert_eq!(
        (
            nic.iface.interface.as_str(),
            nic.iface.mac.as_str(),
            nic.iface.mtu
        ),
        ("eth0", MAC, 1500)
    );
    assert_eq!(nic.iface.addresses, vec!["10.77.0.2/24".to_string()]);
    assert_eq!(
        routes,
        vec![capsa_network::vm::Route {
            destination: "0.0.0.0/0".into(),
            gateway: Some("10.77.0.1".into()),
            nic: 0,
        }]
    );
    let mut tap = std::fs::File::from(nics.remove(0).tap);

    // A spoofed address, then a spoofed MAC: dropped before the network.
    tap.write_all(&arp_request(MAC, [10, 77, 0, 99], [10, 77, 0, 1]))
        .unwrap();
    tap.write_all(&arp_request(OTHER_MAC, [10, 77, 0, 2], [10, 77, 0, 1]))
        .unwrap();
    assert_eq!(
        arp_replies(&mut tap, 500),
        Vec::<Vec<u8>>::new(),
        "a forged frame got an answer"
    );
    assert_eq!(
        neighbour(&peer, "10.77.0.99"),
        "",
        "the forged address was learned"
    );
    assert_eq!(
        neighbour(&peer, "10.77.0.2"),
        "",
        "the forged MAC was learned"
    );

    // The VM's own request reaches the peer, and its reply reaches the VM.
    tap.write_all(&arp_request(MAC, [10, 77, 0, 2], [10, 77, 0, 1]))
        .unwrap();
    let replies = arp_replies(&mut tap, 2000);
    let reply = replies.first().expect("no ARP reply reached the VM");
    assert_eq!(&reply[0..6], &mac_bytes(MAC)[..], "reply to the VM's MAC");
    assert_eq!(&reply[28..32], &[10, 77, 0, 1], "from the gateway");
    assert!(
        neighbour(&peer, "10.77.0.2").contains(MAC),
        "the peer did not learn the VM"
    );

    // A spare NIC (`network connect` later): its tap is down and joined to
    // nothing, so what the VM sends on it goes nowhere.
    let (spare, spare_mac) = capsa_network::vm::spare(&netns, 1).unwrap();
    let mut spare = std::fs::File::from(spare);
    let first = u8::from_str_radix(&spare_mac[..2], 16).unwrap();
    assert_eq!(first & 0x03, 0x02, "not a local unicast MAC: {spare_mac}");
    let state = |tap: &str| sh(&format!("ip -n {ns} -o link show {tap}"));
    assert!(
        !state("capsa_tap1").contains(",UP"),
        "{}",
        state("capsa_tap1")
    );
    // An interface made with the spare's MAC (as netavark makes it on
    // connect), on a second network, is joined by rejoin.
    sh(&format!(
        "ip -n {ns} link add eth1 address {spare_mac} type veth peer name peer1 netns {peer} && \
         ip -n {ns} addr add 10.78.0.2/24 dev eth1 && ip -n {ns} link set eth1 up && \
         ip -n {peer} addr add 10.78.0.1/24 dev peer1 && ip -n {peer} link set peer1 up"
    ));
    let slots = [MAC.to_string(), spare_mac.clone()];
    let (ifaces, routes) = capsa_network::vm::rejoin(&netns, &slots).unwrap();
    let names: Vec<&str> = ifaces.iter().map(|i| i.interface.as_str()).collect();
    assert_eq!(names, ["eth0", "eth1"]);
    assert_eq!(ifaces[1].addresses, ["10.78.0.2/24"]);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(
        state("capsa_tap1").contains(",UP"),
        "{}",
        state("capsa_tap1")
    );
    spare
        .write_all(&arp_request(&spare_mac, [10, 78, 0, 2], [10, 78, 0, 1]))
        .unwrap();
    assert!(
        !arp_replies(&mut spare, 2000).is_empty(),
        "no ARP reply reached the VM through the connected spare"
    );
    assert!(neighbour_on(&peer, "10.78.0.2", "peer1").contains(&spare_mac));
    // Its interface gone (disconnect; the peer goes with it), the spare is
    // parked again: down, with a ruleset that forwards nothing.
    sh(&format!("ip -n {ns} link delete eth1"));
    let (ifaces, _) = capsa_network::vm::rejoin(&netns, &slots).unwrap();
    assert_eq!(ifaces.len(), 1);
    assert!(
        !state("capsa_tap1").contains(",UP"),
        "{}",
        state("capsa_tap1")
    );
    let rules = sh(&format!(
        "ip netns exec {ns} nft list table netdev capsa_tap1"
    ));
    assert!(!rules.contains("fwd"), "{rules}");
    // The first NIC kept its join.
    assert!(sh(&format!(
        "ip netns exec {ns} nft list table netdev capsa_tap0"
    ))
    .contains("fwd"));
    drop(spare);

    // The tap is the VM's descriptor's: closing it removes it.
    drop(tap);
    let links = sh(&format!("ip -n {ns} -o link show"));
    assert!(!links.contains("capsa_tap"), "{links}");
}
