#![no_main]
//! Fuzz target `spdk_reply`: see `metalvirt::fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| metalvirt::fuzz::run("spdk_reply", data));
