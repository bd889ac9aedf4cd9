//! Host <-> guest-agent protocol: message types, framing and versioning (not implemented yet).
