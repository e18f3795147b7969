#![no_main]
//! Fuzz target `config_toml`: see `metalvirt::fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| metalvirt::fuzz::run("config_toml", data));
