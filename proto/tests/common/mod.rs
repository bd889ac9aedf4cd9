#![allow(dead_code)]

use capsa_proto::*;

/// xorshift64*: a small deterministic PRNG for property-style loops.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

pub fn sample_spec() -> oci_spec::runtime::Spec {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut ann = std::collections::HashMap::new();
    for i in 0..20 {
        ann.insert(format!("io.capsa.test.{i}"), format!("value {i}"));
    }
    spec.set_annotations(Some(ann));
    spec.set_hostname(Some("box".into()));
    spec
}

pub fn sample_rootfs() -> Rootfs {
    Rootfs {
        device: "/dev/vda".into(),
        fstype: "erofs".into(),
        writable: WritableLayer::Tmpfs {
            size_bytes: 64 << 20,
        },
        volumes: vec![Volume {
            device: "/dev/vdc".into(),
            fstype: "ext4".into(),
            guest_path: "/run/capsa/volumes/0".into(),
            readonly: true,
        }],
    }
}

/// One of every request.
pub fn all_requests() -> Vec<Request> {
    vec![
        Request::Create {
            container_id: "c1".into(),
            spec: Box::new(sample_spec()),
            rootfs: sample_rootfs(),
            stdio: StdioOptions {
                tty: true,
                stdin: true,
                tty_size: Some(WinSize { rows: 24, cols: 80 }),
                discard_output: false,
            },
            network: Some(capsa_proto::GuestNetwork {
                interfaces: vec![capsa_proto::GuestInterface {
                    mac: "02:42:0a:59:00:02".into(),
                    mtu: 1500,
                    addresses: vec!["10.89.0.2/24".into()],
                }],
                routes: vec![capsa_proto::GuestRoute {
                    destination: "0.0.0.0/0".into(),
                    gateway: Some("10.89.0.1".into()),
                    interface: 0,
                }],
                hosts: Some("10.89.0.2\tweb\n".into()),
                resolv_conf: None,
            }),
            hold_after_exit: true,
            idle: true,
        },
        Request::Create {
            container_id: "c2".into(),
            spec: Box::new(oci_spec::runtime::Spec::default()),
            rootfs: Rootfs {
                device: "/dev/vda".into(),
                fstype: "ext4".into(),
                writable: WritableLayer::Disk {
                    device: "/dev/vdb".into(),
                    fstype: "ext4".into(),
                },
                volumes: vec![],
            },
            stdio: StdioOptions::default(),
            network: None,
            hold_after_exit: false,
            idle: false,
        },
        Request::Start {
            container_id: "c1".into(),
        },
        Request::Exec {
            container_id: "c1".into(),
            exec_id: "e1".into(),
            process: ExecProcess {
                args: vec!["sh".into(), "-c".into(), "echo 'hi\u{e9}'".into()],
                env: vec!["PATH=/bin".into(), "A=b=c".into()],
                cwd: Some("/tmp".into()),
                user: Some(User {
                    uid: 1000,
                    gid: 1000,
                    additional_gids: vec![10, 20],
                }),
                cgroup: Some("sub".into()),
            },
            stdio: StdioOptions {
                tty: false,
                stdin: false,
                tty_size: None,
                discard_output: true,
            },
        },
        Request::Exec {
            container_id: "c1".into(),
            exec_id: "e2".into(),
            process: ExecProcess {
                args: vec!["true".into()],
                ..Default::default()
            },
            stdio: StdioOptions::default(),
        },
        Request::Signal {
            id: "c1".into(),
            signal: 15,
        },
        Request::Wait { id: "e1".into() },
        Request::ResizeTty {
            id: "c1".into(),
            rows: 50,
            cols: 132,
        },
        Request::Stats {
            container_id: "c1".into(),
        },
        Request::Top {
            container_id: "c1".into(),
        },
        Request::Network {
            container_id: "c1".into(),
            network: capsa_proto::GuestNetwork {
                interfaces: vec![capsa_proto::GuestInterface {
                    mac: "02:42:0a:59:00:02".into(),
                    mtu: 1500,
                    addresses: vec!["10.89.0.2/24".into()],
                }],
                routes: Vec::new(),
                hosts: None,
                resolv_conf: Some("nameserver 10.89.0.1\n".into()),
            },
        },
        Request::Update {
            container_id: "c1".into(),
            resources: Box::new(
                serde_json::from_value(serde_json::json!({
                    "memory": {"limit": 67108864, "swap": 67108864},
                    "pids": {"limit": 64}
                }))
                .unwrap(),
            ),
        },
        Request::Shutdown,
        Request::Delete {
            container_id: "c2".into(),
        },
    ]
}

/// One of every response.
pub fn all_responses() -> Vec<Response> {
    vec![
        Response::Ok,
        Response::Exited {
            code: 137,
            oom_killed: true,
        },
        Response::Exited {
            code: -1,
            oom_killed: false,
        },
        Response::Stats(Box::new(Stats {
            memory: MemoryStats {
                usage_bytes: 123,
                max_usage_bytes: Some(456),
                limit_bytes: Some(u64::MAX),
            },
            cpu: CpuStats {
                usage_usec: 1,
                user_usec: 2,
                system_usec: 3,
            },
            pids: PidsStats {
                current: 4,
                limit: None,
            },
            net: NetStats {
                rx_bytes: 5,
                tx_bytes: 6,
            },
            block: Some(BlockStats {
                read_bytes: 7,
                write_bytes: 8,
            }),
        })),
        Response::Processes {
            processes: vec![ProcessInfo {
                pid: 1,
                ppid: 0,
                uid: 1000,
                started: 1_700_000_000,
                cpu_ms: 20,
                tty: "pts/0".into(),
                cmd: "sleep 60".into(),
            }],
        },
        Response::Error(ErrorReply::new(ErrorCode::NotFound, "no container c9")),
    ]
}

/// One of every frame kind, every message inside.
pub fn all_frames() -> Vec<Frame> {
    let mut v = vec![Frame::Hello(Hello::new("capsa 0.1.0"))];
    for (i, request) in all_requests().into_iter().enumerate() {
        v.push(Frame::Request {
            id: i as u64 * 1_000_000_007,
            request,
        });
    }
    for (i, response) in all_responses().into_iter().enumerate() {
        v.push(Frame::Response {
            id: u64::MAX - i as u64,
            response,
        });
    }
    let codes = [
        ErrorCode::VersionMismatch,
        ErrorCode::Handshake,
        ErrorCode::FrameTooLarge,
        ErrorCode::Malformed,
        ErrorCode::InvalidRequest,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::InvalidState,
        ErrorCode::FlowControl,
        ErrorCode::Unsupported,
        ErrorCode::Internal,
        ErrorCode::Unknown,
    ];
    for code in codes {
        v.push(Frame::Error(ErrorReply::new(
            code,
            format!("{code:?} happened"),
        )));
    }
    for stream in [StdStream::Stdin, StdStream::Stdout, StdStream::Stderr] {
        v.push(Frame::Data {
            process: "c1".into(),
            stream,
            data: vec![0, 1, 2, 255, b'\n'],
        });
        v.push(Frame::Window {
            process: "x".repeat(MAX_ID_LEN),
            stream,
            credit: u32::MAX,
        });
        v.push(Frame::Eof {
            process: "e\u{e9}".into(),
            stream,
        });
    }
    v.push(Frame::close_stdin("c1"));
    v.push(Frame::Data {
        process: "big".into(),
        stream: StdStream::Stdout,
        data: vec![7; MAX_FRAME - 6],
    });
    v
}

pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out).expect("encodes");
    out
}
