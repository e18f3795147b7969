#![no_main]
//! Fuzz target `secret_xml`: see `metalvirt::fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| metalvirt::fuzz::run("secret_xml", data));
