//! capsa-vmm: one process per microVM, built on the rust-vmm crates (not implemented yet).
