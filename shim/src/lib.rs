//! Lifecycle core: the container state machine with a namespace backend and a microVM backend.
