//! Request dispatch: one arm per verb, each calling the module that owns
//! it ([`super::pods`], [`super::processes`], [`super::poweroff`]).

use std::sync::Arc;

use capsa_proto::{ErrorCode, Frame, Request, Response};

use super::{err, Agent, Conn};

impl Agent {
    /// Answers a request; `None` when the answer comes later (`Wait`).
    pub(super) fn handle(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        rid: u64,
        req: Request,
    ) -> Option<Response> {
        Some(match req {
            Request::Create {
                container_id,
                spec,
                rootfs,
                stdio,
                network,
                hold_after_exit,
                idle,
            } => {
                let mut spec = *spec;
                if idle {
                    if let Err(e) =
                        crate::container::make_idle(&mut spec, crate::container::STATE_DIR.as_ref())
                    {
                        return Some(err(ErrorCode::InvalidRequest, format!("{e:#}")));
                    }
                }
                if let Some(net) = &network {
                    if let Err(r) = self.take_network(&container_id, net, &mut spec) {
                        return Some(r);
                    }
                }
                if hold_after_exit {
                    self.lock().hold = true;
                }
                self.create(conn, enc, container_id, spec, rootfs, stdio)
            }
            Request::Start { container_id } => self.start(&container_id),
            Request::Exec {
                container_id,
                exec_id,
                process,
                stdio,
            } => self.exec(conn, enc, container_id, exec_id, process, stdio),
            Request::Diff {
                container_id,
                exec_id,
            } => self.diff(conn, enc, container_id, exec_id),
            Request::Signal { id, signal } => self.signal(&id, signal),
            Request::Wait { id } => {
                let me = Arc::clone(self);
                let enc = enc.clone();
                std::thread::spawn(move || {
                    let response = me.wait(&id);
                    let sent = enc.send(&Frame::Response { id: rid, response });
                    if sent.is_ok() {
                        me.reported(&id);
                    }
                });
                return None;
            }
            Request::ResizeTty { id, rows, cols } => self.resize_tty(&id, rows, cols),
            Request::Stats { container_id } => self.stats(&container_id),
            Request::Network {
                container_id,
                network,
            } => self.network(&container_id, &network),
            Request::Top { container_id } => self.top(&container_id),
            Request::Update {
                container_id,
                resources,
            } => self.update(&container_id, &resources),
            Request::Shutdown => {
                self.request_poweroff("the host asked for a shutdown");
                Response::Ok
            }
            Request::Delete { container_id } => self.delete(&container_id),
        })
    }
}
