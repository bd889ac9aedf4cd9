//! A tiny AF_VSOCK peer that runs inside the test guest (built by the
//! integration test with `rustc -C target-feature=+crt-static`, so it needs
//! no libraries in the initramfs and no crates).
//!
//!     vsock_peer listen PORT          accept one connection, echo it back
//!     vsock_peer connect PORT MSG     connect to the host (CID 2), send MSG,
//!                                     print what comes back

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const VMADDR_CID_ANY: u32 = u32::MAX;
const VMADDR_CID_HOST: u32 = 2;
const SHUT_WR: i32 = 1;

#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    zero: [u8; 4],
}

extern "C" {
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
    fn accept(fd: i32, addr: *mut u8, len: *mut u32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn shutdown(fd: i32, how: i32) -> i32;
}

fn addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm {
        family: AF_VSOCK as u16,
        reserved1: 0,
        port,
        cid,
        zero: [0; 4],
    }
}

fn check(what: &str, r: i32) -> i32 {
    if r < 0 {
        eprintln!("vsock_peer: {what}: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    r
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size = std::mem::size_of::<SockaddrVm>() as u32;
    // SAFETY (all calls below): plain socket syscalls on descriptors we own,
    // with a correctly sized sockaddr_vm.
    match args.get(1).map(String::as_str) {
        Some("listen") => {
            let port: u32 = args[2].parse().expect("port");
            let fd = check("socket", unsafe { socket(AF_VSOCK, SOCK_STREAM, 0) });
            let a = addr(VMADDR_CID_ANY, port);
            check("bind", unsafe { bind(fd, &a, size) });
            check("listen", unsafe { listen(fd, 1) });
            println!("vsock_peer: listening on {port}");
            let c = check("accept", unsafe {
                accept(fd, std::ptr::null_mut(), std::ptr::null_mut())
            });
            let mut s = unsafe { File::from_raw_fd(c) };
            let mut buf = [0u8; 4096];
            let mut total = 0;
            loop {
                let n = s.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).expect("write");
                total += n;
            }
            println!("vsock_peer: echoed {total} bytes");
        }
        Some("connect") => {
            let port: u32 = args[2].parse().expect("port");
            let fd = check("socket", unsafe { socket(AF_VSOCK, SOCK_STREAM, 0) });
            let a = addr(VMADDR_CID_HOST, port);
            check("connect", unsafe { connect(fd, &a, size) });
            let mut s = unsafe { File::from_raw_fd(fd) };
            s.write_all(args[3].as_bytes()).expect("write");
            check("shutdown", unsafe { shutdown(fd, SHUT_WR) });
            let mut back = String::new();
            s.read_to_string(&mut back).expect("read");
            println!("GUEST-GOT: {back}");
        }
        _ => {
            eprintln!("usage: vsock_peer listen PORT | connect PORT MSG");
            std::process::exit(2);
        }
    }
}
