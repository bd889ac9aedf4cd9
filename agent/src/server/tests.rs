//! The protocol loop on the host, over a socketpair: everything that
//! needs no container (and so neither PID 1 nor the reaper).

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use capsa_container::ExecRequest;
use capsa_proto::{
    encode_frame, handshake, Decoder, Encoder, ExecProcess, Frame, Hello, Request, Rootfs,
    StdStream, StdioOptions, WritableLayer,
};
use nix::sys::signal::Signal;

use super::poweroff::poweroff_due;
use super::*;

struct Peer {
    enc: Encoder<UnixStream>,
    dec: Decoder<BufReader<UnixStream>>,
    raw: UnixStream,
    server: std::thread::JoinHandle<()>,
}

fn connect(agent: &Arc<Agent>) -> (Peer, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let a = Arc::clone(agent);
    let server = std::thread::spawn(move || a.serve(theirs));
    let peer = Peer {
        enc: Encoder::new(ours.try_clone().unwrap()),
        dec: Decoder::new(BufReader::new(ours.try_clone().unwrap())),
        raw: ours.try_clone().unwrap(),
        server,
    };
    (peer, ours)
}

/// Sends a request and returns its response, skipping the `Eof`s of
/// processes' streams on the way.
fn call(p: &mut Peer, id: u64, request: Request) -> Response {
    p.enc.send(&Frame::Request { id, request }).unwrap();
    loop {
        match p.dec.recv().unwrap() {
            Frame::Response { id: got, response } => {
                assert_eq!(got, id);
                return response;
            }
            Frame::Eof { .. } => {}
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

fn code(r: &Response) -> ErrorCode {
    match r {
        Response::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn requests_without_a_container_get_clear_errors_and_bad_frames_do_not_end_the_session() {
    let agent = Agent::new(false);
    let (mut p, _keep) = connect(&agent);
    let hello = handshake(&mut p.enc, &mut p.dec, "test-host").unwrap();
    assert_eq!(hello.software_version, crate::SOFTWARE_VERSION);

    let r = call(
        &mut p,
        1,
        Request::Stats {
            container_id: "c".into(),
        },
    );
    assert_eq!(code(&r), ErrorCode::NotFound);
    let r = call(
        &mut p,
        2,
        Request::Signal {
            id: "c".into(),
            signal: 15,
        },
    );
    assert_eq!(code(&r), ErrorCode::NotFound);
    let r = call(
        &mut p,
        3,
        Request::Signal {
            id: "c".into(),
            signal: 999,
        },
    );
    assert_eq!(code(&r), ErrorCode::InvalidRequest);
    let r = call(&mut p, 4, Request::Wait { id: "nope".into() });
    assert_eq!(code(&r), ErrorCode::NotFound);
    let r = call(
        &mut p,
        5,
        Request::ResizeTty {
            id: "c".into(),
            rows: 1,
            cols: 1,
        },
    );
    assert_eq!(code(&r), ErrorCode::NotFound);
    let r = call(
        &mut p,
        6,
        Request::Exec {
            container_id: "c".into(),
            exec_id: "e".into(),
            process: ExecProcess::default(),
            stdio: StdioOptions::default(),
        },
    );
    assert_eq!(code(&r), ErrorCode::NotFound);
    // An id that would escape the agent's state directory.
    let r = call(
        &mut p,
        7,
        Request::Create {
            container_id: "../x".into(),
            spec: Box::default(),
            rootfs: Rootfs {
                device: "/dev/vda".into(),
                fstype: "ext4".into(),
                writable: WritableLayer::Tmpfs {
                    size_bytes: 1 << 20,
                },
                volumes: vec![],
            },
            stdio: StdioOptions::default(),
            network: None,
            hold_after_exit: false,
            idle: false,
        },
    );
    assert_eq!(code(&r), ErrorCode::InvalidRequest);

    // A request frame whose JSON is broken: an error frame, and the
    // session goes on.
    let mut buf = Vec::new();
    encode_frame(
        &Frame::Request {
            id: 8,
            request: Request::Stats {
                container_id: "c".into(),
            },
        },
        &mut buf,
    )
    .unwrap();
    let brace = buf.iter().position(|b| *b == b'{').unwrap();
    buf[brace] = b'!';
    p.raw.write_all(&buf).unwrap();
    match p.dec.recv().unwrap() {
        Frame::Error(e) => assert_eq!(e.code, ErrorCode::Malformed),
        Frame::Response { response, .. } => assert_eq!(code(&response), ErrorCode::Malformed),
        other => panic!("expected an error about the bad frame, got {other:?}"),
    }
    // Stdin data for a process that does not exist.
    p.enc
        .send(&Frame::Data {
            process: "ghost".into(),
            stream: StdStream::Stdin,
            data: b"x".to_vec(),
        })
        .unwrap();
    match p.dec.recv().unwrap() {
        Frame::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
        other => panic!("expected an error, got {other:?}"),
    }
    let r = call(
        &mut p,
        9,
        Request::Stats {
            container_id: "c".into(),
        },
    );
    assert_eq!(code(&r), ErrorCode::NotFound, "still answering");

    // Shutdown is answered and asks for the power-off.
    assert_eq!(call(&mut p, 10, Request::Shutdown), Response::Ok);
    let why = agent.wait_for_poweroff(None);
    assert!(why.contains("shutdown"), "{why}");
    p.raw.shutdown(std::net::Shutdown::Both).unwrap();
    p.server.join().unwrap();
    assert!(agent.lock().conns.is_empty(), "connection forgotten");
}

#[test]
fn a_peer_with_another_protocol_version_is_refused() {
    let agent = Agent::new(false);
    let (mut p, _keep) = connect(&agent);
    p.enc
        .send(&Frame::Hello(Hello {
            protocol_version: capsa_proto::PROTOCOL_VERSION + 1,
            software_version: "capsa 9".into(),
        }))
        .unwrap();
    assert!(matches!(p.dec.recv().unwrap(), Frame::Hello(_)));
    match p.dec.recv().unwrap() {
        Frame::Error(e) => assert_eq!(e.code, ErrorCode::VersionMismatch),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The agent closes the connection and does not count it.
    p.server.join().unwrap();
    assert!(agent.lock().conns.is_empty());
}

#[test]
fn no_container_within_the_create_timeout_powers_off() {
    let agent = Agent::new(false);
    let why = agent.wait_for_poweroff(Some(Duration::from_millis(100)));
    assert!(why.contains("no container was created"), "{why}");
}

/// What the stand-in containers were asked to do.
type Log = Arc<Mutex<Vec<String>>>;

/// A container that is only bookkeeping: it logs what it is asked.
struct Fake {
    id: String,
    log: Log,
}

impl Managed for Fake {
    fn start(&mut self) -> Result<()> {
        self.log.lock().unwrap().push(format!("start {}", self.id));
        Ok(())
    }
    fn kill(&self, sig: Signal) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("kill {} {sig}", self.id));
        Ok(())
    }
    fn exec(&self, _req: &ExecRequest, _io: ProcessIo) -> Result<i32> {
        Ok(next_fake_pid())
    }
    fn diff(&self, _io: ProcessIo) -> Result<i32> {
        Ok(next_fake_pid())
    }
    fn oom_killed(&self) -> bool {
        false
    }
    fn stats(&self) -> capsa_proto::Stats {
        capsa_proto::Stats::default()
    }
    fn processes(&self) -> Vec<capsa_proto::ProcessInfo> {
        Vec::new()
    }
    fn update(&self, _: &oci_spec::runtime::LinuxResources) -> anyhow::Result<()> {
        Ok(())
    }
    fn destroy(&mut self) {
        self.log
            .lock()
            .unwrap()
            .push(format!("destroy {}", self.id));
    }
    fn remove_state(&mut self) {
        self.log.lock().unwrap().push(format!("remove {}", self.id));
    }
}

/// PIDs above Linux's PID_MAX_LIMIT (2^22): no real process has one,
/// so teardown's SIGKILL to them reaches nobody.
fn next_fake_pid() -> i32 {
    static NEXT: AtomicU64 = AtomicU64::new(5_000_000);
    NEXT.fetch_add(1, Ordering::SeqCst) as i32
}

/// An agent whose containers are [`Fake`]s; their stdio is closed at
/// once, as by a process that wrote nothing.
fn fake_agent() -> (Arc<Agent>, Log) {
    let log = Log::default();
    let l = log.clone();
    let agent = Agent::with_maker(
        false,
        Box::new(
            move |id: &str,
                  _spec: Spec,
                  _rootfs: &Rootfs,
                  io: ProcessIo,
                  register: &mut dyn FnMut(i32)| {
                drop(io);
                register(next_fake_pid());
                Ok(Box::new(Fake {
                    id: id.to_string(),
                    log: l.clone(),
                }) as Box<dyn Managed>)
            },
        ),
    );
    (agent, log)
}

fn create(id: &str) -> Request {
    Request::Create {
        container_id: id.into(),
        spec: Box::default(),
        rootfs: Rootfs {
            device: "/dev/vda".into(),
            fstype: "ext4".into(),
            writable: WritableLayer::Tmpfs {
                size_bytes: 1 << 20,
            },
            volumes: vec![],
        },
        stdio: StdioOptions::default(),
        network: None,
        hold_after_exit: false,
        idle: false,
    }
}

fn pid_of(agent: &Agent, id: &str) -> i32 {
    agent.lock().procs[id].pid
}

/// Waits up to 5 s until `holds` is true of the agent's state; `what`
/// names it in the failure.
fn until(agent: &Agent, what: &str, holds: impl Fn(&State) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !holds(&agent.lock()) {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the host has been sent `id`'s exit (the agent notes it
/// after the reply is written).
fn until_reported(agent: &Agent, id: &str) {
    until(agent, &format!("{id}'s exit noted"), |st| {
        st.procs.get(id).is_some_and(|p| p.reported)
    });
}

fn due(agent: &Agent) -> Option<String> {
    poweroff_due(&agent.lock(), Instant::now(), None)
}

#[test]
fn several_containers_share_the_guest_and_only_the_first_ends_it() {
    let (agent, log) = fake_agent();
    let (mut p, _keep) = connect(&agent);
    handshake(&mut p.enc, &mut p.dec, "test-host").unwrap();

    assert_eq!(call(&mut p, 1, create("c1")), Response::Ok);
    let r = call(&mut p, 2, create("c1"));
    assert_eq!(code(&r), ErrorCode::AlreadyExists, "same id twice");
    assert_eq!(
        call(&mut p, 3, create("c2")),
        Response::Ok,
        "a second container"
    );
    for (rid, id) in [(4, "c1"), (5, "c2")] {
        let start = Request::Start {
            container_id: id.into(),
        };
        assert_eq!(call(&mut p, rid, start), Response::Ok);
    }
    let stats = Request::Stats {
        container_id: "c2".into(),
    };
    assert!(matches!(call(&mut p, 6, stats), Response::Stats(_)));

    // Requests address the container they name.
    let sig = Request::Signal {
        id: "c2".into(),
        signal: 15,
    };
    assert_eq!(call(&mut p, 7, sig), Response::Ok);
    assert_eq!(log.lock().unwrap().last().unwrap(), "kill c2 SIGTERM");
    // A signal to PID 1 goes to every running container.
    log.lock().unwrap().clear();
    agent.forward(Signal::SIGHUP);
    let mut got = log.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ["kill c1 SIGHUP", "kill c2 SIGHUP"]);
    log.lock().unwrap().clear();

    // An exec in c2 keeps it from being deleted after its init exits.
    let exec = Request::Exec {
        container_id: "c2".into(),
        exec_id: "e1".into(),
        process: ExecProcess::default(),
        stdio: StdioOptions::default(),
    };
    assert_eq!(call(&mut p, 8, exec), Response::Ok);
    let delete = |id: &str| Request::Delete {
        container_id: id.into(),
    };
    let r = call(&mut p, 9, delete("c2"));
    assert_eq!(code(&r), ErrorCode::InvalidState, "c2 still runs: {r:?}");
    assert_eq!(code(&call(&mut p, 10, delete("nope"))), ErrorCode::NotFound);

    agent.exited(pid_of(&agent, "c2"), 6);
    let wait = Request::Wait { id: "c2".into() };
    assert_eq!(
        call(&mut p, 11, wait),
        Response::Exited {
            code: 6,
            oom_killed: false
        }
    );
    until_reported(&agent, "c2");
    assert_eq!(
        due(&agent),
        None,
        "the second container's exit does not end the guest"
    );
    match call(&mut p, 12, delete("c2")) {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidState);
            assert!(e.message.contains("e1"), "{e}");
        }
        other => panic!("delete with a live exec answered {other:?}"),
    }
    agent.exited(pid_of(&agent, "e1"), 0);
    assert!(!log.lock().unwrap().iter().any(|l| l.starts_with("kill")));
    assert_eq!(call(&mut p, 13, delete("c2")), Response::Ok);
    {
        let l = log.lock().unwrap();
        assert_eq!(l[l.len() - 2..], ["destroy c2", "remove c2"]);
        let st = agent.lock();
        assert!(!st.procs.contains_key("c2") && !st.procs.contains_key("e1"));
        assert!(st.poweroff.is_none());
    }
    assert_eq!(code(&call(&mut p, 14, delete("c2"))), ErrorCode::NotFound);
    let wait = Request::Wait { id: "c2".into() };
    assert_eq!(code(&call(&mut p, 15, wait)), ErrorCode::NotFound);
    // The id can be created again.
    assert_eq!(call(&mut p, 16, create("c2")), Response::Ok);
    let start = Request::Start {
        container_id: "c2".into(),
    };
    assert_eq!(call(&mut p, 17, start), Response::Ok);

    // The first container (the sandbox's) exits: not before the host
    // has been told, and then the guest powers off.
    let r = call(&mut p, 18, delete("c1"));
    assert_eq!(code(&r), ErrorCode::InvalidState, "c1 still runs");
    agent.exited(pid_of(&agent, "c1"), 0);
    assert_eq!(due(&agent), None, "the host is connected and not told yet");
    let wait = Request::Wait { id: "c1".into() };
    assert_eq!(
        call(&mut p, 19, wait),
        Response::Exited {
            code: 0,
            oom_killed: false
        }
    );
    let why = agent.wait_for_poweroff(None);
    assert_eq!(why, "the container exited with code 0");

    // Power-off ends the containers still there.
    p.raw.shutdown(std::net::Shutdown::Both).unwrap();
    p.server.join().unwrap();
    log.lock().unwrap().clear();
    agent.teardown(Duration::ZERO);
    let mut got = log.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ["destroy c1", "destroy c2"]);
    assert!(agent.lock().containers.is_empty());
}

#[test]
fn the_first_container_ends_the_guest_once_reported_deleted_or_unwatched() {
    // Deleting the sandbox's container means the host knows it exited.
    let (agent, _log) = fake_agent();
    let (mut p, _keep) = connect(&agent);
    handshake(&mut p.enc, &mut p.dec, "test-host").unwrap();
    assert_eq!(call(&mut p, 1, create("sandbox")), Response::Ok);
    assert_eq!(call(&mut p, 2, create("app")), Response::Ok);
    agent.exited(pid_of(&agent, "sandbox"), 137);
    assert_eq!(due(&agent), None);
    let delete = Request::Delete {
        container_id: "sandbox".into(),
    };
    assert_eq!(call(&mut p, 3, delete), Response::Ok);
    let why = due(&agent).expect("powering off");
    assert!(why.contains("137"), "{why}");

    // With no host connected, the first container's exit is enough; a
    // later container's is not.
    let (agent, _log) = fake_agent();
    let (mut p, _keep) = connect(&agent);
    handshake(&mut p.enc, &mut p.dec, "test-host").unwrap();
    assert_eq!(call(&mut p, 1, create("sandbox")), Response::Ok);
    assert_eq!(call(&mut p, 2, create("app")), Response::Ok);
    p.raw.shutdown(std::net::Shutdown::Both).unwrap();
    p.server.join().unwrap();
    agent.exited(pid_of(&agent, "app"), 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(due(&agent), None);
    agent.exited(pid_of(&agent, "sandbox"), 3);
    let why = agent.wait_for_poweroff(Some(Duration::ZERO));
    assert_eq!(why, "the container exited with code 3");
}

#[test]
fn a_held_guest_outlives_the_exit_for_a_diff_and_ends_on_shutdown() {
    let (agent, _log) = fake_agent();
    let (mut p, _keep) = connect(&agent);
    handshake(&mut p.enc, &mut p.dec, "test-host").unwrap();
    let Request::Create {
        container_id,
        spec,
        rootfs,
        stdio,
        network,
        ..
    } = create("step")
    else {
        unreachable!()
    };
    let held = Request::Create {
        container_id,
        spec,
        rootfs,
        stdio,
        network,
        hold_after_exit: true,
        idle: false,
    };
    assert_eq!(call(&mut p, 1, held), Response::Ok);
    agent.exited(pid_of(&agent, "step"), 0);
    let wait = Request::Wait { id: "step".into() };
    assert!(matches!(
        call(&mut p, 2, wait),
        Response::Exited { code: 0, .. }
    ));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(due(&agent), None, "reported, but held");
    // The exited container's layer can still be asked for; an exec cannot.
    let diff = Request::Diff {
        container_id: "step".into(),
        exec_id: "diff-1".into(),
    };
    assert_eq!(call(&mut p, 3, diff), Response::Ok);
    let exec = Request::Exec {
        container_id: "step".into(),
        exec_id: "e1".into(),
        process: capsa_proto::ExecProcess {
            args: vec!["true".into()],
            ..Default::default()
        },
        stdio: StdioOptions::default(),
    };
    assert_eq!(code(&call(&mut p, 4, exec)), ErrorCode::InvalidState);
    assert_eq!(call(&mut p, 5, Request::Shutdown), Response::Ok);
    assert!(due(&agent).is_some(), "Shutdown ends a held guest");
}

/// Waits until the agent holds no process `id`.
fn until_forgotten(agent: &Agent, id: &str) {
    until(agent, &format!("{id} forgotten"), |st| {
        !st.procs.contains_key(id)
    });
}

#[test]
fn an_exec_whose_host_side_is_gone_is_forgotten_once_it_exits() {
    let (agent, _log) = fake_agent();
    let (mut keep, _k) = connect(&agent);
    handshake(&mut keep.enc, &mut keep.dec, "test-host").unwrap();
    assert_eq!(call(&mut keep, 1, create("c")), Response::Ok);
    let exec = |id: &str| Request::Exec {
        container_id: "c".into(),
        exec_id: id.into(),
        process: ExecProcess::default(),
        stdio: StdioOptions {
            discard_output: true,
            ..Default::default()
        },
    };
    // docker's `exec -d`: the host's connection closes at once.
    let (mut gone, _g) = connect(&agent);
    handshake(&mut gone.enc, &mut gone.dec, "test-host").unwrap();
    assert_eq!(call(&mut gone, 1, exec("d1")), Response::Ok);
    // The same, but the process ends before the connection does.
    assert_eq!(call(&mut gone, 2, exec("d2")), Response::Ok);
    agent.exited(pid_of(&agent, "d2"), 0);
    gone.raw.shutdown(std::net::Shutdown::Both).unwrap();
    gone.server.join().unwrap();
    until_forgotten(&agent, "d2");
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        agent.lock().procs.contains_key("d1"),
        "a running process is kept: it can still be signalled"
    );
    agent.exited(pid_of(&agent, "d1"), 0);
    until_forgotten(&agent, "d1");
    // Its id is free again; a process whose connection is open is kept
    // after its exit, for that connection's `Wait`.
    assert_eq!(call(&mut keep, 2, exec("d1")), Response::Ok);
    agent.exited(pid_of(&agent, "d1"), 4);
    std::thread::sleep(Duration::from_millis(50));
    let wait = Request::Wait { id: "d1".into() };
    assert!(matches!(
        call(&mut keep, 3, wait),
        Response::Exited { code: 4, .. }
    ));
    until_forgotten(&agent, "d1");
    assert!(
        agent.lock().procs.contains_key("c"),
        "an init is never dropped"
    );
}
