#![no_main]
//! Fuzz target `redfish_json`: see `metalvirt::fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| metalvirt::fuzz::run("redfish_json", data));
