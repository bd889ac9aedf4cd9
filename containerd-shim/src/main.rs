//! containerd's shim v2 for capsa: `ctr run --runtime io.containerd.capsa.v2 …`,
//! or a Kubernetes RuntimeClass (see docs/kubernetes.md).

fn main() {
    capsa_containerd_shim::main();
}
