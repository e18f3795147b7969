#![no_main]
//! Fuzz target `ovsdb_reply`: see `metalvirt::fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| metalvirt::fuzz::run("ovsdb_reply", data));
