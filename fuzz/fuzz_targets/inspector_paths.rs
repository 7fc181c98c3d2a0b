//! libFuzzer entry for `inspector_paths`: see `cloud_client_infra_fuzz::inspector_paths` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloud_client_infra_fuzz::inspector_paths(data));
