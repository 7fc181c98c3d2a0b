//! libFuzzer entry for `apikey_header`: see `cloud_client_infra_fuzz::apikey_header` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloud_client_infra_fuzz::apikey_header(data));
