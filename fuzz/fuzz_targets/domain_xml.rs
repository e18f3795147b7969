#![no_main]
//! Fuzz target `domain_xml`: see `metalvirt::fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| metalvirt::fuzz::run("domain_xml", data));
