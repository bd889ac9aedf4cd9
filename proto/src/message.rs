//! Message types: what travels between the host and the guest agent.
//!
//! Control messages ([`Hello`], [`Request`], [`Response`], [`ErrorReply`])
//! are serde types carried as JSON; stream frames ([`Frame::Data`],
//! [`Frame::Window`], [`Frame::Eof`]) have a small binary layout (see
//! [`crate::codec`]).

use serde::{Deserialize, Serialize};

/// Version of the wire protocol. Bump it on any incompatible change; the
/// handshake refuses a peer that speaks another version.
///
/// v2 added [`Request::Delete`] (several containers per guest); v3
/// [`Request::Top`], [`Request::Update`] and network and block figures in
/// [`Stats`]; v4 [`Request::Diff`]; v5 [`Request::Network`].
pub const PROTOCOL_VERSION: u32 = 5;

/// Longest container or exec id, in bytes (ids travel in a one-byte length
/// field in stream frames).
pub const MAX_ID_LEN: usize = 255;

/// First frame each way: who is speaking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Wire protocol version, [`PROTOCOL_VERSION`] for this crate.
    pub protocol_version: u32,
    /// The speaker's software version (e.g. `capsa 0.1.0`), for messages.
    pub software_version: String,
}

impl Hello {
    /// A hello for this crate's [`PROTOCOL_VERSION`].
    pub fn new(software_version: impl Into<String>) -> Self {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            software_version: software_version.into(),
        }
    }
}

/// Which standard stream of a process a stream frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdStream {
    /// Host -> agent.
    Stdin = 0,
    /// Agent -> host. With a tty, stdout carries the terminal output.
    Stdout = 1,
    /// Agent -> host. Unused with a tty.
    Stderr = 2,
}

impl StdStream {
    /// Wire value of the stream.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Stream for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(StdStream::Stdin),
            1 => Some(StdStream::Stdout),
            2 => Some(StdStream::Stderr),
            _ => None,
        }
    }
}

/// Where the agent finds the container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// Guest block device holding the image's filesystem, e.g. `/dev/vda`.
    /// It is mounted read-only.
    pub device: String,
    /// Its filesystem type: `ext4` or `erofs`.
    pub fstype: String,
    /// The writable layer the agent puts on top with overlayfs.
    pub writable: WritableLayer,
    /// Extra read-only disks (e.g. packed `-v` volumes) the agent mounts
    /// before creating the container, so the spec's bind mounts can use them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

/// Upper layer of the container's root overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WritableLayer {
    /// A tmpfs of at most `size_bytes`.
    Tmpfs {
        /// Size limit of the tmpfs, in bytes.
        size_bytes: u64,
    },
    /// A scratch block device, formatted by the host.
    Disk {
        /// Guest block device, e.g. `/dev/vdb`.
        device: String,
        /// Its filesystem type, e.g. `ext4`.
        fstype: String,
    },
    /// No overlay: the root itself (an engine's root directory shared with
    /// virtio-fs) is mounted read-write and written in place, as runc
    /// writes a bundle's rootfs.
    InPlace,
}

/// The file system type of a virtio-fs share; its "device" is the tag.
pub const VIRTIOFS: &str = "virtiofs";

/// A disk or a virtio-fs share the agent mounts at `guest_path` before
/// creating the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Guest block device, e.g. `/dev/vdc`, or a share's tag.
    pub device: String,
    /// Its filesystem type.
    pub fstype: String,
    /// Where the agent mounts it in the guest (outside the container).
    pub guest_path: String,
    /// Mount it read-only.
    pub readonly: bool,
}

/// The guest's network, copied from the container's network namespace on
/// the host (whose interfaces the VM's NICs stand in for): the agent gives
/// each NIC, found by its MAC, the same addresses and MTU, and the guest the
/// same routes, before the container is created. The container then shares
/// the guest's network namespace, which is its alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// The NICs, in the VM's order (eth0, eth1, …).
    pub interfaces: Vec<GuestInterface>,
    /// IPv4 routes besides each subnet's own.
    #[serde(default)]
    pub routes: Vec<GuestRoute>,
    /// The container's /etc/hosts and /etc/resolv.conf, as the host wrote
    /// them for its network (names, search domains, DNS servers).
    #[serde(default)]
    pub hosts: Option<String>,
    /// See `hosts`.
    #[serde(default)]
    pub resolv_conf: Option<String>,
}

/// One NIC of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    /// `02:42:0a:59:00:02`: the NIC's MAC, set by the VMM.
    pub mac: String,
    /// The host-side interface's MTU.
    pub mtu: u16,
    /// IPv4 addresses with their prefix length, `10.89.0.2/24`.
    pub addresses: Vec<String>,
}

/// An IPv4 route: `destination` is `A.B.C.D/N` (`0.0.0.0/0` for the
/// default route), through `gateway` if any, out of `interfaces[interface]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRoute {
    /// `A.B.C.D/N`.
    pub destination: String,
    /// The next hop, if not on-link.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into [`GuestNetwork::interfaces`].
    pub interface: usize,
}

/// Terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// How a process's standard streams are wired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioOptions {
    /// Give the process a pseudo-terminal: only `Stdin` and `Stdout` streams
    /// are used (stdout carries the terminal's output).
    pub tty: bool,
    /// Keep stdin open: the host sends `Stdin` data and an `Eof` on it. When
    /// false the process's stdin is `/dev/null` and no stdin frames are sent.
    pub stdin: bool,
    /// Initial terminal size (tty only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<WinSize>,
    /// No output streams: the process's stdout and stderr are `/dev/null`
    /// and no output frames are sent (docker's `exec -d`; not with `tty`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_output: bool,
}

/// User a process runs as (numeric, already resolved by the host).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

/// A process to run in an existing container ([`Request::Exec`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecProcess {
    /// argv; `args[0]` is looked up in the container's PATH.
    pub args: Vec<String>,
    /// Environment, `KEY=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; the container's when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User; the container's when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// runc's `exec --cgroup`: a sub-cgroup of the container's (in the
    /// guest), relative, made if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// A request from the host. Every request gets exactly one [`Response`]
/// carrying the same request id.
///
/// Process ids: the container's init process is named by its container id,
/// an exec'd process by its exec id; the two share one namespace in the
/// agent (an exec id may not equal a live container or exec id). Stream
/// frames name processes the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a container (namespaces, mounts, process set up, but the
    /// user process not started). Reply: `Ok`.
    ///
    /// A guest may hold several containers (the containers of one pod),
    /// each with its own id. The first one created is the sandbox's: the
    /// guest powers off once it has exited and its exit was reported (or no
    /// host is connected); the others' exits do not end the guest.
    Create {
        /// Container id, 1..=[`MAX_ID_LEN`] bytes.
        container_id: String,
        /// The OCI runtime spec (config.json). Its `root.path` is relative to
        /// the rootfs the agent assembles from `rootfs`.
        spec: Box<oci_spec::runtime::Spec>,
        /// Where the root filesystem comes from.
        rootfs: Rootfs,
        /// How the init process's stdio is wired.
        stdio: StdioOptions,
        /// The network the guest takes on first (VM mode with a network).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<GuestNetwork>,
        /// The guest stays up after this container's process exits, until
        /// `Shutdown` or `Delete` (or the host hangs up), so that the host
        /// can still ask for its `Diff` (`capsa build`'s RUN steps).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hold_after_exit: bool,
        /// Run no program of the image: the container's process only waits
        /// to be killed, so that, once started, `Exec` and `Diff` reach the
        /// files of a stopped container (`cp`, `commit`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        idle: bool,
    },
    /// Start the created container's process. Reply: `Ok`.
    Start {
        /// Container id.
        container_id: String,
    },
    /// Run another process in a running container. Reply: `Ok` once it runs.
    Exec {
        /// Container to run in.
        container_id: String,
        /// New process id, 1..=[`MAX_ID_LEN`] bytes.
        exec_id: String,
        /// What to run.
        process: ExecProcess,
        /// How its stdio is wired.
        stdio: StdioOptions,
    },
    /// Send a signal to a process (container id or exec id). Reply: `Ok`.
    Signal {
        /// Process id.
        id: String,
        /// Signal number (e.g. 15 for SIGTERM).
        signal: i32,
    },
    /// Wait until a process exits. Reply: `Exited`. The agent sends it after
    /// the process's last stdout/stderr bytes and their `Eof` frames.
    Wait {
        /// Process id.
        id: String,
    },
    /// Resize a process's terminal. Reply: `Ok`.
    ResizeTty {
        /// Process id.
        id: String,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Resource usage of a container. Reply: `Stats`.
    Stats {
        /// Container id.
        container_id: String,
    },
    /// New cgroup limits for a running container (`capsa update`): its
    /// whole `linux.resources`. Reply: `Ok`.
    Update {
        /// Container id.
        container_id: String,
        /// The resources, as in the container's spec.
        resources: Box<oci_spec::runtime::LinuxResources>,
    },
    /// The guest's network changed while the container runs (`capsa
    /// network connect` / `disconnect`): `network` is all of it now. The
    /// NICs it lists are configured as at create, every other NIC is taken
    /// down with its addresses, and the container's /etc/hosts and
    /// /etc/resolv.conf are rewritten in place. Reply: `Ok`.
    Network {
        /// Container id (the one created with a network).
        container_id: String,
        /// The network as it is now.
        network: GuestNetwork,
    },
    /// The processes of a container (`capsa top`). Reply: `Processes`.
    Top {
        /// Container id.
        container_id: String,
    },
    /// The container's writable layer as an OCI layer tar (`capsa
    /// commit`), written by a process of the agent's, outside the
    /// container, on stdout as process `exec_id` (stderr says why it
    /// failed; `Wait` gives its exit code). The container's processes are
    /// frozen meanwhile. Reply: `Ok` once it runs.
    Diff {
        /// Container id.
        container_id: String,
        /// New process id, 1..=[`MAX_ID_LEN`] bytes.
        exec_id: String,
    },
    /// Kill every process, sync, and power the guest off. Reply: `Ok`
    /// (sent before the power-off).
    Shutdown,
    /// Remove a container whose init process has exited: its processes'
    /// state, its runtime state and cgroup, its root overlay and disks are
    /// released, and its id may be created again. Kills nothing: a container
    /// with a live process is refused (`InvalidState`). Reply: `Ok`.
    Delete {
        /// Container id.
        container_id: String,
    },
}

impl Request {
    /// Short name of the request, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Create { .. } => "create",
            Request::Start { .. } => "start",
            Request::Exec { .. } => "exec",
            Request::Signal { .. } => "signal",
            Request::Wait { .. } => "wait",
            Request::ResizeTty { .. } => "resize_tty",
            Request::Stats { .. } => "stats",
            Request::Network { .. } => "network",
            Request::Top { .. } => "top",
            Request::Diff { .. } => "diff",
            Request::Update { .. } => "update",
            Request::Shutdown => "shutdown",
            Request::Delete { .. } => "delete",
        }
    }

    /// Checks what serde cannot: ids that name new processes (and the
    /// container a `Delete` removes) are non-empty and fit [`MAX_ID_LEN`]. The decoder applies it to every request.
    pub fn validate(&self) -> Result<(), String> {
        let check = |what: &str, id: &str| {
            if id.is_empty() || id.len() > MAX_ID_LEN {
                Err(format!(
                    "{what} must be 1 to {MAX_ID_LEN} bytes long, got {} bytes",
                    id.len()
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Request::Create { container_id, .. } | Request::Delete { container_id } => {
                check("container_id", container_id)
            }
            Request::Exec {
                container_id,
                exec_id,
                ..
            }
            | Request::Diff {
                container_id,
                exec_id,
            } => {
                check("container_id", container_id)?;
                check("exec_id", exec_id)
            }
            _ => Ok(()),
        }
    }
}

/// Memory usage of a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Current usage, bytes.
    pub usage_bytes: u64,
    /// Peak usage, bytes, when the kernel reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_usage_bytes: Option<u64>,
    /// Limit, bytes; `None` when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
}

/// CPU time used by a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Total CPU time, microseconds.
    pub usage_usec: u64,
    /// User CPU time, microseconds.
    pub user_usec: u64,
    /// System CPU time, microseconds.
    pub system_usec: u64,
}

/// Process count of a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    /// Live processes.
    pub current: u64,
    /// Limit; `None` when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// Traffic of a container's network namespace, every interface but
/// loopback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Block-device I/O of a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStats {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

/// Reply to [`Request::Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Memory.
    pub memory: MemoryStats,
    /// CPU.
    pub cpu: CpuStats,
    /// Processes.
    pub pids: PidsStats,
    /// Network.
    #[serde(default)]
    pub net: NetStats,
    /// Block I/O; `None` where the kernel does not count it (a guest
    /// kernel without the io controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockStats>,
}

/// One process of a container, as `ps -ef` shows it (reply to
/// [`Request::Top`]). PIDs are those of the side that read them: the
/// host's in container mode, the guest's in VM mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process ID.
    pub pid: i32,
    /// Parent's process ID.
    pub ppid: i32,
    /// Real user ID.
    pub uid: u32,
    /// Start time, seconds since the epoch.
    pub started: i64,
    /// CPU time used (user + system), milliseconds.
    pub cpu_ms: u64,
    /// Controlling terminal ("pts/0"), or "?".
    pub tty: String,
    /// Command line; `[name]` when it has none (a kernel thread, a zombie).
    pub cmd: String,
}

/// What went wrong, in a form a program can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The handshake was not followed (first frame not a hello).
    Handshake,
    /// A frame's length field exceeds [`crate::MAX_FRAME`].
    FrameTooLarge,
    /// A frame that could not be decoded (bad JSON, bad layout, unknown kind).
    Malformed,
    /// A well-formed request that makes no sense (bad id, bad argument).
    InvalidRequest,
    /// No container or process with that id.
    NotFound,
    /// A container or process with that id exists already.
    AlreadyExists,
    /// The request does not fit the container's state (e.g. start twice).
    InvalidState,
    /// The peer sent more stream data than the window allowed.
    FlowControl,
    /// The agent cannot do this (feature not supported in the guest).
    Unsupported,
    /// The agent failed to do what was asked (details in the message).
    Internal,
    /// A code this side does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

/// An explicit error: a reply to a request ([`Response::Error`]) or, when
/// no request can be named, a connection-level [`Frame::Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message, ready to show to a user.
    pub message: String,
}

impl ErrorReply {
    /// An error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = serde_json::to_value(self.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", self.code));
        write!(f, "{} ({code})", self.message)
    }
}

/// The agent's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Done.
    Ok,
    /// Reply to `Wait`: the process is gone.
    Exited {
        /// Exit code as docker/runc report it: the process's own code, or
        /// 128+N when signal N killed it.
        code: i32,
        /// The kernel's OOM killer killed a process of the container.
        oom_killed: bool,
    },
    /// Reply to `Stats` (boxed: it is the largest reply).
    Stats(Box<Stats>),
    /// Reply to `Top`.
    Processes {
        /// One entry per process.
        processes: Vec<ProcessInfo>,
    },
    /// The request failed.
    Error(ErrorReply),
}

/// One unit on the wire.
// A request (a container's create holds its rootfs and network) is larger
// than the stream frames; a frame is built and moved once per message, so
// boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Handshake: the first frame each way.
    Hello(Hello),
    /// Host -> agent request. `id` is chosen by the host, unique among its
    /// outstanding requests, and echoed in the response.
    Request {
        /// Request id.
        id: u64,
        /// The request.
        request: Request,
    },
    /// Agent -> host response to the request with the same id.
    Response {
        /// Request id.
        id: u64,
        /// The response.
        response: Response,
    },
    /// An error that belongs to no request (bad frame, refused handshake).
    /// Either side may send it; after a fatal one the sender closes.
    Error(ErrorReply),
    /// Bytes of a standard stream. The sender must hold credit for them
    /// (see [`crate::flow`]).
    Data {
        /// Process id (container id or exec id).
        process: String,
        /// Which stream.
        stream: StdStream,
        /// The bytes (never empty on the wire from this crate's encoder).
        data: Vec<u8>,
    },
    /// The receiver of a stream consumed `credit` more bytes: the sender may
    /// send that many more.
    Window {
        /// Process id.
        process: String,
        /// Which stream (the direction is implied: a window for `Stdin` goes
        /// agent -> host, for `Stdout`/`Stderr` host -> agent).
        stream: StdStream,
        /// Additional bytes allowed, > 0.
        credit: u32,
    },
    /// End of a stream: no more `Data` follows on it. `Eof` on `Stdin`
    /// is "close stdin".
    Eof {
        /// Process id.
        process: String,
        /// Which stream.
        stream: StdStream,
    },
}

impl Frame {
    /// Short name of the frame's kind, for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Request { .. } => "request",
            Frame::Response { .. } => "response",
            Frame::Error(_) => "error",
            Frame::Data { .. } => "data",
            Frame::Window { .. } => "window",
            Frame::Eof { .. } => "eof",
        }
    }

    /// `Eof` on a process's stdin.
    pub fn close_stdin(process: impl Into<String>) -> Frame {
        Frame::Eof {
            process: process.into(),
            stream: StdStream::Stdin,
        }
    }
}
