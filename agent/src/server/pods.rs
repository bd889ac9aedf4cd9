//! The containers the guest holds (the containers of one pod share its
//! microVM): the [`Managed`] trait the agent drives them through, and the
//! requests that address a container — `Create` (joining the sandbox's
//! namespaces), `Start`, `Stats`, `Delete` — plus forwarding PID 1's
//! signals to them. The first container created is the sandbox's; see
//! [`super::poweroff`] for what its end means.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use capsa_container::{ExecRequest, ProcessIo};
use capsa_proto::{ErrorCode, Response, StdioOptions};
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;

use super::processes::Proc;
use super::{err, not_found, Agent, Conn};
use crate::container::Container;

/// What the agent asks of a container: a [`Container`] in the guest, a
/// stand-in in the unit tests (which run neither as PID 1 nor as root).
pub trait Managed: Send {
    fn start(&mut self) -> Result<()>;
    /// Signals the container's init.
    fn kill(&self, sig: Signal) -> Result<()>;
    /// Starts another process in the container; returns its PID.
    fn exec(&self, req: &ExecRequest, io: ProcessIo) -> Result<i32>;
    /// Starts the writer of its writable layer as a tar (`Diff`); returns
    /// its PID.
    fn diff(&self, io: ProcessIo) -> Result<i32>;
    fn oom_killed(&self) -> bool;
    fn stats(&self) -> capsa_proto::Stats;
    /// Its processes (`capsa top`).
    fn processes(&self) -> Vec<capsa_proto::ProcessInfo>;
    /// New cgroup limits (`capsa update`).
    fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()>;
    /// Kills what is left and releases the container. Idempotent.
    fn destroy(&mut self);
    /// After `destroy`: removes its state so its id can be created again.
    fn remove_state(&mut self);
}

impl Managed for Container {
    fn start(&mut self) -> Result<()> {
        Container::start(self)
    }
    fn kill(&self, sig: Signal) -> Result<()> {
        Container::kill(self, sig)
    }
    fn exec(&self, req: &ExecRequest, io: ProcessIo) -> Result<i32> {
        Container::exec(self, req, io)
    }
    fn diff(&self, io: ProcessIo) -> Result<i32> {
        Container::diff(self, io)
    }
    fn oom_killed(&self) -> bool {
        Container::oom_killed(self)
    }
    fn stats(&self) -> capsa_proto::Stats {
        capsa_container::cgroup::v2_stats(&self.cgroup_dir())
    }
    fn processes(&self) -> Vec<capsa_proto::ProcessInfo> {
        capsa_container::cgroup::v2_processes(&self.cgroup_dir())
    }
    fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        Container::update(self, resources)
    }
    fn destroy(&mut self) {
        Container::destroy(self)
    }
    fn remove_state(&mut self) {
        Container::remove_state(self)
    }
}

/// Creates a container (its init waiting for `start`), calling `register`
/// with the init's PID before anything can reap it.
pub(super) type Maker = dyn Fn(&str, Spec, &capsa_proto::Rootfs, ProcessIo, &mut dyn FnMut(i32)) -> Result<Box<dyn Managed>>
    + Send
    + Sync;

impl Agent {
    /// A signal PID 1 received goes to every container whose init runs.
    pub(super) fn forward(&self, sig: Signal) {
        let st = self.lock();
        for (id, c) in &st.containers {
            if st.procs.get(id).is_some_and(|p| p.exit.is_none()) {
                let _ = c.kill(sig);
            }
        }
    }

    /// `Start`: lets the container's init, created waiting, run.
    pub(super) fn start(&self, container_id: &str) -> Response {
        let mut st = self.lock();
        match st.containers.get_mut(container_id) {
            Some(c) => match c.start() {
                Ok(()) => Response::Ok,
                Err(e) => err(ErrorCode::InvalidState, format!("{e:#}")),
            },
            None => not_found(container_id),
        }
    }

    /// `Stats`: the container's resource usage.
    pub(super) fn stats(&self, container_id: &str) -> Response {
        self.answer(container_id, |c| Response::Stats(Box::new(c.stats())))
    }

    /// `Update`: new cgroup limits.
    pub(super) fn update(
        &self,
        container_id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Response {
        self.answer(container_id, |c| match c.update(resources) {
            Ok(()) => Response::Ok,
            Err(e) => err(ErrorCode::Internal, format!("{e:#}")),
        })
    }

    /// `Top`: the container's processes.
    pub(super) fn top(&self, container_id: &str) -> Response {
        self.answer(container_id, |c| Response::Processes {
            processes: c.processes(),
        })
    }

    /// `f`'s answer about container `container_id`, or NotFound.
    fn answer(&self, container_id: &str, f: impl FnOnce(&dyn Managed) -> Response) -> Response {
        let st = self.lock();
        match st.containers.get(container_id) {
            Some(c) => f(c.as_ref()),
            None => not_found(container_id),
        }
    }

    /// A pod's members share some of its sandbox's namespaces (those the
    /// engine asks for: network, IPC, UTS, PID). The host names them `container:ID` — paths on the host
    /// mean nothing here — and they become the namespaces of container
    /// ID's first process in this guest.
    fn pod_namespaces(&self, mut spec: Spec) -> Result<Spec> {
        use oci_spec::runtime::LinuxNamespaceType as T;
        let Some(linux) = spec.linux_mut() else {
            return Ok(spec);
        };
        let Some(mut namespaces) = linux.namespaces().clone() else {
            return Ok(spec);
        };
        for ns in namespaces.iter_mut() {
            let Some(owner) = ns
                .path()
                .as_ref()
                .and_then(|p| p.to_str())
                .and_then(|p| p.strip_prefix("container:"))
                .map(str::to_string)
            else {
                continue;
            };
            let pid = {
                let st = self.lock();
                st.procs
                    .get(&owner)
                    .filter(|p| p.init && p.exit.is_none())
                    .map(|p| p.pid)
            }
            .with_context(|| {
                format!("container {owner}, whose namespaces this one joins, is not running in this guest")
            })?;
            let file = match ns.typ() {
                T::Network => "net",
                T::Ipc => "ipc",
                T::Uts => "uts",
                T::Pid => "pid",
                other => anyhow::bail!(
                    "joining another container's {other:?} namespace is not supported"
                ),
            };
            ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/{file}"))));
        }
        linux.set_namespaces(Some(namespaces));
        Ok(spec)
    }

    /// Gives the guest the container's network (VM mode with a network):
    /// its NICs configured, the container in the guest's namespace with the
    /// host's /etc files for it.
    pub(super) fn take_network(
        &self,
        id: &str,
        net: &capsa_proto::GuestNetwork,
        spec: &mut Spec,
    ) -> Result<(), Response> {
        let fail = |code, e: anyhow::Error| err(code, format!("{e:#}"));
        crate::container::check_id(id).map_err(|e| fail(ErrorCode::InvalidRequest, e))?;
        crate::netconf::configure(net)
            .and_then(|()| crate::parking::park_others(&macs(net)))
            .context("configuring the guest's network")
            .map_err(|e| fail(ErrorCode::Internal, e))?;
        let etc = crate::container::etc_dir(id);
        crate::netconf::fit_spec(net, spec, &etc).map_err(|e| fail(ErrorCode::Internal, e))
    }

    /// `Network`: the container's networks changed while it runs. The
    /// NICs it lists come into the guest's namespace, the others leave it
    /// (and with it their addresses and routes).
    pub(super) fn network(&self, id: &str, net: &capsa_proto::GuestNetwork) -> Response {
        let etc = crate::container::etc_dir(id);
        self.answer(id, |_| {
            let macs = macs(net);
            let done = crate::parking::unpark(&macs)
                .and_then(|()| crate::parking::park_others(&macs))
                .and_then(|()| crate::netconf::configure(net))
                .and_then(|()| crate::netconf::rewrite_etc(net, &etc))
                .context("changing the guest's network");
            match done {
                Ok(()) => Response::Ok,
                Err(e) => err(ErrorCode::Internal, format!("{e:#}")),
            }
        })
    }

    pub(super) fn create(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        id: String,
        spec: Spec,
        rootfs: capsa_proto::Rootfs,
        stdio: StdioOptions,
    ) -> Response {
        if let Err(e) = crate::container::check_id(&id) {
            return err(ErrorCode::InvalidRequest, format!("{e:#}"));
        }
        {
            let mut st = self.lock();
            if st.containers.contains_key(&id) || st.busy.contains(&id) {
                return err(
                    ErrorCode::AlreadyExists,
                    format!("container {id} exists already in this guest"),
                );
            }
            if st.procs.contains_key(&id) {
                return err(
                    ErrorCode::AlreadyExists,
                    format!("a process named {id:?} exists already in this guest"),
                );
            }
            st.busy.insert(id.clone());
        }
        let mut made: Option<Box<dyn Managed>> = None;
        let result = (|| -> Result<()> {
            let spec = self.pod_namespaces(spec)?;
            let (io, wiring) = self.wiring(&stdio)?;
            let ops = self.ops();
            let serial = self.next_serial.fetch_add(1, Ordering::SeqCst);
            let mut register = |pid: i32| {
                self.lock()
                    .procs
                    .insert(id.clone(), Proc::new(pid, &id, serial, true, conn));
            };
            made = Some((self.make)(&id, spec, &rootfs, io, &mut register)?);
            drop(ops);
            self.connect_streams(conn, enc, &id, wiring, &stdio)
        })();
        let failed = match (result, made) {
            (Ok(()), Some(c)) => {
                let mut st = self.lock();
                st.containers.insert(id.clone(), c);
                st.first.get_or_insert_with(|| id.clone());
                None
            }
            (Ok(()), None) => Some(anyhow::anyhow!("the container was not made")),
            (Err(e), made) => {
                if let Some(mut c) = made {
                    let _ops = self.ops();
                    c.destroy();
                    c.remove_state();
                }
                Some(e)
            }
        };
        let mut st = self.lock();
        st.busy.remove(&id);
        self.cv.notify_all();
        match failed {
            None => Response::Ok,
            Some(e) => {
                st.procs.remove(&id);
                err(ErrorCode::Internal, format!("{e:#}"))
            }
        }
    }

    /// Removes a container whose processes have all exited; kills nothing.
    pub(super) fn delete(&self, id: &str) -> Response {
        let mut st = self.lock();
        if st.busy.contains(id) {
            return err(
                ErrorCode::InvalidState,
                format!("container {id} is being created or deleted"),
            );
        }
        if !st.containers.contains_key(id) {
            return not_found(id);
        }
        let mut running: Vec<&str> = st
            .procs
            .iter()
            .filter(|(_, p)| p.container == id && p.exit.is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        running.sort_by_key(|name| *name != id);
        if let Some(first) = running.first() {
            let what = if *first == id {
                format!("container {id} is still running")
            } else {
                format!("process {first} of container {id} is still running")
            };
            return err(
                ErrorCode::InvalidState,
                format!("{what}: signal it and wait for its exit before deleting"),
            );
        }
        let code = st.procs.get(id).and_then(|p| p.exit).unwrap_or(-1);
        let names: Vec<String> = st
            .procs
            .iter()
            .filter(|(_, p)| p.container == id)
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            if let Some(mut p) = st.procs.remove(&name) {
                for (_, c) in &p.credits {
                    c.close();
                }
                p.stdin = None;
            }
        }
        let mut c = st.containers.remove(id).expect("checked above");
        st.busy.insert(id.to_string());
        if st.first.as_deref() == Some(id) {
            // The host knows it exited: the sandbox is over.
            st.poweroff.get_or_insert_with(|| {
                format!("the container exited with code {code} and was deleted")
            });
        }
        drop(st);
        {
            let _ops = self.ops();
            c.destroy();
            c.remove_state();
        }
        let mut st = self.lock();
        st.busy.remove(id);
        self.cv.notify_all();
        Response::Ok
    }
}

/// The MACs of the NICs a network names.
fn macs(net: &capsa_proto::GuestNetwork) -> Vec<&str> {
    net.interfaces.iter().map(|i| i.mac.as_str()).collect()
}
