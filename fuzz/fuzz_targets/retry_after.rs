//! libFuzzer entry for `retry_after`: see `cloud_client_infra_fuzz::retry_after` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloud_client_infra_fuzz::retry_after(data));
