//! Integration tests of the whole system, in both isolation modes.
