//! Guest kernel and KVM test-host kernel: config fragments, build script and cache (not implemented yet).
