#![no_main]
//! Fuzz target `device_xml`: see `metalvirt::fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| metalvirt::fuzz::run("device_xml", data));
