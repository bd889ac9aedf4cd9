//! The capsa command line.

fn main() {}
