//! libFuzzer entry for `kubeconfig`: see `cloud_client_infra_fuzz::kubeconfig` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloud_client_infra_fuzz::kubeconfig(data));
