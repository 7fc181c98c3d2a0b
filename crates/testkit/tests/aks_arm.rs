//! The ARM endpoint for AKS credentials: auth and api-version checks, and kubeconfigs that work.

use azure_core::credentials::TokenCredential;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::Kubeconfig;
use testkit::azurite::TestCredential;
use testkit::k8s::{AuthMethod, K8sServer, SAMPLE_NAMESPACE, arm_test_token, kube_client};

fn http(server: &K8sServer) -> reqwest::Client {
    let ca = reqwest::Certificate::from_der(&server.ca().cert_der()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap()
}

async fn credential(server: &K8sServer, admin: bool, token: &str) -> reqwest::Response {
    let url = server.aks_credential_url("sub-1", "rg-1", "aks-1", admin);
    http(server)
        .post(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn kubeconfig_from(resp: reqwest::Response) -> (String, Kubeconfig) {
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let entry = &body["kubeconfigs"][0];
    let text = base64::engine::general_purpose::STANDARD
        .decode(entry["value"].as_str().unwrap())
        .unwrap();
    let kubeconfig = Kubeconfig::from_yaml(std::str::from_utf8(&text).unwrap()).unwrap();
    (entry["name"].as_str().unwrap().to_owned(), kubeconfig)
}

#[tokio::test]
async fn user_credential_is_a_working_token_kubeconfig() {
    let server = K8sServer::start().await.unwrap();
    let resp = credential(&server, false, &arm_test_token(3600)).await;
    let (name, kubeconfig) = kubeconfig_from(resp).await;
    assert_eq!(name, "clusterUser");
    assert_eq!(kubeconfig.current_context.as_deref(), Some("aks-1"));
    let pods = Api::<Pod>::namespaced(kube_client(kubeconfig).await.unwrap(), SAMPLE_NAMESPACE);
    pods.list(&ListParams::default()).await.unwrap();
    let log = server.requests();
    assert_eq!(log.last().unwrap().auth, AuthMethod::Bearer);
    assert_eq!(log.last().unwrap().path, "/api/v1/namespaces/testkit/pods");
}

#[tokio::test]
async fn admin_credential_is_a_working_client_certificate_kubeconfig() {
    let server = K8sServer::start().await.unwrap();
    // A TestCredential asked for the ARM scope mints a token the endpoint accepts.
    let azure = TestCredential::new();
    let token = azure
        .get_token(&["https://management.azure.com/.default"], None)
        .await
        .unwrap();
    let resp = credential(&server, true, token.token.secret()).await;
    let (name, kubeconfig) = kubeconfig_from(resp).await;
    assert_eq!(name, "clusterAdmin");
    let pods = Api::<Pod>::namespaced(kube_client(kubeconfig).await.unwrap(), SAMPLE_NAMESPACE);
    pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        server.requests().last().unwrap().auth,
        AuthMethod::ClientCert
    );
}

#[tokio::test]
async fn missing_expired_or_wrong_audience_tokens_get_arm_401s() {
    let server = K8sServer::start().await.unwrap();
    let url = server.aks_credential_url("s", "rg", "c", false);
    let client = http(&server);

    let resp = client.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "AuthenticationFailed");

    let resp = credential(&server, false, &arm_test_token(-60)).await;
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "ExpiredAuthenticationToken");

    let storage = TestCredential::new()
        .get_token(&["https://storage.azure.com/.default"], None)
        .await
        .unwrap();
    let resp = credential(&server, false, storage.token.secret()).await;
    assert_eq!(resp.status(), 401);

    // The cluster's own token is not an ARM token either.
    let resp = credential(&server, false, server.token()).await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn api_version_and_post_are_required() {
    let server = K8sServer::start().await.unwrap();
    let url = server.aks_credential_url("s", "rg", "c", true);
    let token = arm_test_token(3600);
    let client = http(&server);
    let no_version = url.split('?').next().unwrap();
    let resp = client
        .post(no_version)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(server.requests().len(), 2);
}
