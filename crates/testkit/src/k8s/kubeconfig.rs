//! In-memory kubeconfigs (client certificate or bearer token) and `kube::Client`s built from them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::error::K8sError;
use crate::tls::{Leaf, install_crypto_provider};

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum KubeAuth<'a> {
    /// A client certificate and key (embedded as base64 PEM, like `client-certificate-data`).
    ClientCert(&'a Leaf),
    /// A bearer token (a secret: it ends up in the kubeconfig, never in logs).
    Token(&'a str),
}

/// A kubeconfig with one cluster, user and context, all called `name`, current context set.
/// Everything is embedded (`*-data` fields): no file is read or written.
pub fn build_kubeconfig(
    server_url: &str,
    ca_pem: &str,
    name: &str,
    auth: KubeAuth<'_>,
) -> Kubeconfig {
    let user = match auth {
        KubeAuth::ClientCert(leaf) => json!({
            "client-certificate-data": STANDARD.encode(leaf.cert_pem()),
            "client-key-data": STANDARD.encode(leaf.key_pem()),
        }),
        KubeAuth::Token(token) => json!({ "token": token }),
    };
    let value = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": name, "cluster": {
            "server": server_url,
            "certificate-authority-data": STANDARD.encode(ca_pem),
        }}],
        "users": [{ "name": name, "user": user }],
        "contexts": [{ "name": name, "context": { "cluster": name, "user": name } }],
        "current-context": name,
    });
    serde_json::from_value(value).expect("a kubeconfig built from known fields deserialises")
}

/// The kubeconfig as text (JSON, which every kubeconfig reader accepts as YAML), e.g. for the
/// base64 `value` of an AKS credential answer. Contains the secrets it holds.
pub fn kubeconfig_text(kubeconfig: &Kubeconfig) -> String {
    serde_json::to_string(kubeconfig).expect("a kubeconfig serialises")
}

/// A `kube::Client` for `kubeconfig`'s current context, with kube's default retries OFF (so a
/// test that injects 429/503 sees it instead of 15 silent retries). Installs the ring rustls
/// provider first. Build one per test: a client is bound to the runtime it was built on.
pub async fn kube_client(kubeconfig: Kubeconfig) -> Result<kube::Client, K8sError> {
    install_crypto_provider();
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(K8sError::Kubeconfig)?;
    config.default_retry = false;
    kube::Client::try_from(config).map_err(K8sError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TestCa;

    #[test]
    fn kubeconfig_text_round_trips_through_kubes_yaml_reader() {
        let ca = TestCa::new("k").unwrap();
        let leaf = ca.client_leaf("admin", &["system:masters"]).unwrap();
        let kc = build_kubeconfig(
            "https://127.0.0.1:1",
            ca.cert_pem(),
            "c",
            KubeAuth::ClientCert(&leaf),
        );
        let back = Kubeconfig::from_yaml(&kubeconfig_text(&kc)).unwrap();
        assert_eq!(back.current_context.as_deref(), Some("c"));
        let user = back.auth_infos[0].auth_info.as_ref().unwrap();
        let cert = STANDARD
            .decode(user.client_certificate_data.as_ref().unwrap())
            .unwrap();
        assert_eq!(cert, leaf.cert_pem().as_bytes());
        let kc = build_kubeconfig(
            "https://127.0.0.1:1",
            ca.cert_pem(),
            "c",
            KubeAuth::Token("t0k"),
        );
        assert!(kubeconfig_text(&kc).contains("\"token\":\"t0k\""));
    }
}
