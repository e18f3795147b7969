//! Placeholder replaced by the protocol benchmark client.
fn main() {}
