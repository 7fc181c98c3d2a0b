//! libFuzzer entry for `aks_credentials`: see `cloud_client_infra_fuzz::aks_credentials` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloud_client_infra_fuzz::aks_credentials(data));
