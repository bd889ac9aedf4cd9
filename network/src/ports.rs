//! Published ports: docker's `-p` syntax, and holding each host port for
//! as long as it is published (neither netavark nor the kernel's DNAT
//! checks that a host port is free: without the held socket a second
//! container, or a host service, would silently lose its traffic).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => bail!("unsupported protocol {other:?}: use tcp or udp"),
        }
    }
}

/// One `-p`: `[HOSTIP:][HOSTPORT:]CTRPORT[/PROTO]`, where either port may
/// be a range `A-B` (both of the same length). A host port of 0 means "any
/// free port", chosen when the container starts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// None: every address of the host.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub range: u16,
    pub protocol: Protocol,
}

impl PortSpec {
    /// A container port published on a free host port (`-p 80`, `-P`).
    pub fn any_host_port(container_port: u16, protocol: Protocol) -> PortSpec {
        PortSpec {
            host_ip: None,
            host_port: 0,
            container_port,
            range: 1,
            protocol,
        }
    }

    /// The container ports this publishes.
    pub fn container_ports(&self) -> impl Iterator<Item = u16> + '_ {
        (0..self.range).map(|i| self.container_port + i)
    }
}

impl FromStr for PortSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<PortSpec> {
        let bad = |why: &str| anyhow::anyhow!("invalid port {spec:?}: {why}");
        let (rest, protocol) = match spec.rsplit_once('/') {
            Some((r, p)) => (r, p.parse().map_err(|e| bad(&format!("{e}")))?),
            None => (spec, Protocol::Tcp),
        };
        if rest.starts_with('[') {
            return Err(bad("IPv6 host addresses are not supported yet"));
        }
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, host, ctr) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [ip, h, c] => (Some(*ip), Some(*h).filter(|h| !h.is_empty()), *c),
            _ => return Err(bad("use [HOSTIP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]")),
        };
        let host_ip = match ip {
            None | Some("") => None,
            Some(ip) => Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?,
            ),
        }
        .filter(|ip| !ip.is_unspecified());
        let (container_port, range) = port_range(ctr).map_err(|e| bad(&e))?;
        let host_port = match host {
            None => 0,
            Some(h) => {
                let (start, n) = port_range(h).map_err(|e| bad(&e))?;
                if n != range {
                    return Err(bad("the host and container port ranges differ in length"));
                }
                start
            }
        };
        if host_port == 0 && range > 1 {
            return Err(bad("a container port range needs a host port range"));
        }
        Ok(PortSpec {
            host_ip,
            host_port,
            container_port,
            range,
            protocol,
        })
    }
}

/// One container port, `PORT[/tcp|udp]`, as an image's EXPOSE and
/// `capsa port` name it.
pub fn container_port(s: &str) -> Result<(u16, Protocol)> {
    let (num, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let num = port_number(num).map_err(|e| anyhow::anyhow!("invalid port {s:?}: {e}"))?;
    Ok((num, proto.parse()?))
}

fn port_number(p: &str) -> std::result::Result<u16, String> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("{p:?} is not a port number (1-65535)")),
    }
}

/// `N` or `A-B` → (first port, count).
fn port_range(s: &str) -> std::result::Result<(u16, u16), String> {
    match s.split_once('-') {
        None => Ok((port_number(s)?, 1)),
        Some((a, b)) => {
            let (a, b) = (port_number(a)?, port_number(b)?);
            if b < a {
                return Err(format!("the range {s:?} ends before it starts"));
            }
            Ok((a, b - a + 1))
        }
    }
}

impl fmt::Display for PortSpec {
    /// As `docker ps` shows a published port: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let span = |start: u16| {
            if self.range > 1 {
                format!("{start}-{}", start + self.range - 1)
            } else {
                start.to_string()
            }
        };
        write!(
            f,
            "{ip}:{}->{}/{}",
            span(self.host_port),
            span(self.container_port),
            self.protocol
        )
    }
}

/// Binds every host port of `specs` (choosing the free ones for host port
/// 0, which are then filled in) and returns the sockets: whoever holds them
/// holds the ports. A taken port is an error naming it.
pub fn hold(specs: &mut [PortSpec]) -> Result<Vec<OwnedFd>> {
    let mut held = Vec::new();
    for spec in specs.iter_mut() {
        let ip = spec.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        for i in 0..spec.range {
            let port = if spec.host_port == 0 {
                0
            } else {
                spec.host_port + i
            };
            let addr = SocketAddrV4::new(ip, port);
            let (fd, bound) = bind(addr, spec.protocol).map_err(|e| taken(addr, spec, e))?;
            if spec.host_port == 0 {
                spec.host_port = bound;
            }
            held.push(fd);
        }
    }
    Ok(held)
}

/// A socket bound to `addr` that never listens: it reserves the port
/// without accepting anything (the published traffic is DNAT'd before it
/// could reach it). Close-on-exec, so no child inherits it.
fn bind(addr: SocketAddrV4, protocol: Protocol) -> std::io::Result<(OwnedFd, u16)> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn};
    let typ = match protocol {
        Protocol::Tcp => SockType::Stream,
        Protocol::Udp => SockType::Datagram,
    };
    let fd = socket::socket(AddressFamily::Inet, typ, SockFlag::SOCK_CLOEXEC, None)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(addr),
    )?;
    let local: SockaddrIn = socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    Ok((fd, local.port()))
}

fn taken(addr: SocketAddrV4, spec: &PortSpec, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot publish {}: host port {}/{} is already in use",
            spec,
            addr,
            spec.protocol
        )
    } else {
        anyhow::anyhow!(
            "cannot publish {spec}: binding {addr}/{}: {e}",
            spec.protocol
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortSpec {
        s.parse().unwrap()
    }

    #[test]
    fn docker_forms() {
        assert_eq!(p("8080:80").to_string(), "0.0.0.0:8080->80/tcp");
        assert_eq!(
            p("127.0.0.1:8080:80/udp").to_string(),
            "127.0.0.1:8080->80/udp"
        );
        assert_eq!(p("127.0.0.1::80").host_port, 0);
        assert_eq!(p("80"), PortSpec::any_host_port(80, Protocol::Tcp));
        assert_eq!(
            p("8000-8002:9000-9002").to_string(),
            "0.0.0.0:8000-8002->9000-9002/tcp"
        );
        assert_eq!(p("0.0.0.0:53:53/UDP").host_ip, None);
    }

    #[test]
    fn container_ports_as_images_expose_them() {
        assert_eq!(container_port("80").unwrap(), (80, Protocol::Tcp));
        assert_eq!(container_port("53/UDP").unwrap(), (53, Protocol::Udp));
        for bad in ["0", "http", "80/icmp", "8080:80"] {
            assert!(container_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_specs_name_the_problem() {
        for (spec, why) in [
            ("70000:80", "not a port number"),
            ("80:80/icmp", "unsupported protocol"),
            ("8000-8001:80", "differ in length"),
            ("80-81", "needs a host port range"),
            ("1.2.3:80:80", "not an IPv4 address"),
            ("a:b:c:d", "use [HOSTIP:]"),
            ("[::1]:80:80", "IPv6"),
            ("90-80:90-80", "ends before"),
        ] {
            let err = spec.parse::<PortSpec>().unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }

    #[test]
    fn a_held_port_cannot_be_published_twice() {
        let mut first = vec![p("127.0.0.1::80")];
        let _held = hold(&mut first).unwrap();
        let port = first[0].host_port;
        assert_ne!(port, 0, "a free port is chosen");
        let mut again = vec![format!("127.0.0.1:{port}:80").parse().unwrap()];
        let err = hold(&mut again).unwrap_err().to_string();
        assert!(err.contains("already in use"), "{err}");
    }
}
