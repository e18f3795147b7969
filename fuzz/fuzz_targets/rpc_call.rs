#![no_main]
//! Fuzz target `rpc_call`: see `metalvirt::fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| metalvirt::fuzz::run("rpc_call", data));
