//! OCI image store: load, pull, save, layer unpacking and runtime spec generation.
