//! The dashboard's API end to end: Azurite (Blob storage and the API-key document), one
//! Kubernetes API test server per simulated cluster, the 429-prone upstream, the dashboard
//! served on loopback and called over HTTP like the page calls it.

use dashboard::local::{LocalStorage, NAMESPACE, Simulation, SimulationOptions};
use dashboard::{ADMIN_TOKEN_HEADER, AdminToken, Dashboard, Mode, Running};
use serde_json::{Value, json};

const ADMIN: &str = "test-admin-token";

struct Harness {
    sim: Simulation,
    dashboard: Dashboard,
    running: Running,
    http: reqwest::Client,
}

impl Harness {
    async fn start(storage: &LocalStorage, mode: Mode) -> Self {
        Self::start_with(storage, mode, |_| {}).await
    }

    async fn start_with(
        storage: &LocalStorage,
        mode: Mode,
        configure: impl FnOnce(&mut dashboard::DashboardConfig),
    ) -> Self {
        // No injected latency: these tests check answers and counts, not timing.
        let options = SimulationOptions::default().latency_ms((0, 0));
        let sim = Simulation::start(&options).await.expect("simulation");
        let mut config = sim.dashboard_config(storage, mode).expect("config");
        config.admin_token = Some(AdminToken::new(ADMIN));
        configure(&mut config);
        let dashboard = Dashboard::new(config, dashboard::local::credential()).expect("dashboard");
        dashboard.prepare().await.expect("containers");
        let running = dashboard.serve().await.expect("serve");
        Self {
            sim,
            dashboard,
            running,
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.running.url()));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the dashboard answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str, key: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, Some(key), None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn account(&self, id: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/admin/accounts",
                None,
                Some(json!({ "id": id })),
            )
            .await;
        assert_eq!(status, 403, "no admin token: {body}");
        let response = self
            .http
            .post(format!("{}/api/admin/accounts", self.running.url()))
            .header(ADMIN_TOKEN_HEADER, ADMIN)
            .header("content-type", "application/json")
            .body(json!({ "id": id, "name": "Test" }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        body["api_key"].as_str().expect("a key").to_string()
    }
}

async fn storage() -> LocalStorage {
    match LocalStorage::start().await {
        Ok(storage) => storage,
        Err(e) => panic!("needs Azurite: cargo xtask it: {e}"),
    }
}

// covers A8 (401 JSON without a key), A3 (a new key works at once on this instance), K1 (one
// session per cluster however many calls), W3 through the dashboard (every warmup URL once),
// B1/B8 (one blob client, one token per scope), R1/R2 through POST (429 + Retry-After, then
// accepted), I2/I3 (polling GETs not kept, the POST kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: cargo xtask it"]
async fn every_route_answers_through_the_pooled_crates() {
    let storage = storage().await;
    let h = Harness::start(&storage, Mode::Pooled).await;

    let (status, body) = h.call(reqwest::Method::GET, "/api/me", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "missing_api_key");
    let key = h.account("alice").await;
    assert_eq!(h.get("/api/me", &key).await["account"], "alice");

    let aks = h.get("/api/monitor/aks", &key).await;
    let nodes: Vec<u64> = aks["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["nodes"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes, [3, 4, 5]);
    let detail = h.get("/api/monitor/aks/aks-westeurope", &key).await;
    assert_eq!(detail["nodes"].as_array().unwrap().len(), 4);
    assert_eq!(detail["warnings"][0]["reason"], "BackOff");
    let (status, body) = h
        .call(
            reqwest::Method::GET,
            "/api/monitor/aks/nope",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_cluster"))
    );

    let jobs = h.get("/api/monitor/jobs?cluster=aks-eastus", &key).await;
    assert_eq!(jobs["clusters"].as_array().unwrap().len(), 1);
    let states: Vec<&str> = jobs["clusters"][0]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "failed").count(),
        1,
        "{states:?}"
    );

    assert_eq!(h.sim.arm_calls(), 3, "one AKS credential call per cluster");
    let cluster = &h.sim.clusters[0];
    cluster.server.clear_requests();
    let warmup = h.get("/api/warmup/aks-eastus", &key).await;
    let status = &warmup["status"];
    assert_eq!(status["complete"], true, "{status}");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(status["databases"], json!(["orders", "users", "inventory"]));
    let requests = cluster.server.requests();
    assert_eq!(
        requests.len(),
        6 + 6,
        "six reads and six log tails: {requests:?}"
    );
    let mut urls: Vec<String> = requests.iter().map(|r| r.url()).collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), requests.len(), "every URL once");
    assert!(requests.iter().all(
        |r| r.path.contains(&format!("/namespaces/{NAMESPACE}/")) || r.path == "/api/v1/nodes"
    ));

    let (status, submitted) = h
        .call(
            reqwest::Method::POST,
            "/api/blast/jobs",
            Some(&key),
            Some(json!({ "database": "orders" })),
        )
        .await;
    assert_eq!(status, 202, "{submitted}");
    assert_eq!(submitted["upstream_status"], 200);
    let id = submitted["id"].as_str().unwrap();
    let path = format!("/submit/{id}");
    assert_eq!(
        h.sim.upstream.requests_on(&path),
        2,
        "429 first, then accepted"
    );
    let listed = h.get("/api/blast/jobs", &key).await;
    assert_eq!(listed["jobs"][0]["name"], format!("{id}.json"));
    assert_eq!(h.get("/api/monitor/storage", &key).await["blobs"], 1);

    let inspector = h.get("/api/inspector", &key).await;
    let entries = inspector["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "only the POST is kept: {inspector}");
    assert_eq!(entries[0]["method"], "POST");
    assert_eq!(
        entries[0]["request_body"]["text"],
        r#"{"database":"orders"}"#
    );

    let stats = h.dashboard.stats();
    assert_eq!(stats.clusters.sessions_created, 3, "{stats:?}");
    assert!(stats.clusters.session_hits >= 4, "{stats:?}");
    assert_eq!(stats.storage.clients_created, 1, "{stats:?}");
    assert_eq!(
        stats.token_fetches, 2,
        "one ARM and one storage token: {stats:?}"
    );
    assert_eq!(
        (stats.upstream.retries, stats.upstream.pool_timeouts),
        (1, 0)
    );
    h.running.stop().await;
}

// Issue 24 (flat for days): the jobs container keeps the newest `job_retention` jobs, so the
// storage card and the job list cost the same after a day of submissions as after a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: cargo xtask it"]
async fn old_jobs_are_pruned_to_the_retention() {
    let storage = storage().await;
    let h = Harness::start_with(&storage, Mode::Pooled, |config| {
        config.storage.job_retention = 3;
    })
    .await;
    let key = h.account("acme").await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        let (status, submitted) = h
            .call(
                reqwest::Method::POST,
                "/api/blast/jobs",
                Some(&key),
                Some(json!({ "database": "orders" })),
            )
            .await;
        assert_eq!(status, 202, "{submitted}");
        ids.push(format!("{}.json", submitted["id"].as_str().unwrap()));
    }
    let card = h.get("/api/monitor/storage", &key).await;
    assert_eq!(card["blobs"], 3, "{card}");
    let listed = h.get("/api/blast/jobs", &key).await;
    let names: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["name"].as_str().unwrap())
        .collect();
    let newest: Vec<&str> = ids.iter().rev().take(3).map(String::as_str).collect();
    assert_eq!(names, newest, "the newest three are kept");
    h.running.stop().await;
}

// covers A7 / seed 003: an account created through one dashboard instance authenticates on
// another instance over the same Blob key document at once (a miss reloads the document).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: cargo xtask it"]
async fn a_key_issued_on_one_instance_works_on_another() {
    let storage = storage().await;
    let a = Harness::start(&storage, Mode::Pooled).await;
    let b = Harness::start(&storage, Mode::Pooled).await;
    let _warm = b
        .call(reqwest::Method::GET, "/api/me", Some("ak_nothing"), None)
        .await;
    let key = a.account("bob").await;
    assert_eq!(b.get("/api/me", &key).await["account"], "bob");
    assert!(b.dashboard.stats().key_store_loads >= 2);
}

// The naive mode serves the same answers, at the seeds' cost: a client per call, a blob client
// and token per storage call, every request captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: cargo xtask it"]
async fn naive_mode_gives_the_same_answers_at_the_seeds_cost() {
    let storage = storage().await;
    let pooled = Harness::start(&storage, Mode::Pooled).await;
    let naive = Harness::start(&storage, Mode::Naive).await;
    let (kp, kn) = (pooled.account("p").await, naive.account("n").await);
    for path in [
        "/api/monitor/aks",
        "/api/monitor/jobs",
        "/api/warmup/aks-southeastasia",
    ] {
        let (mut a, mut b) = (pooled.get(path, &kp).await, naive.get(path, &kn).await);
        for v in [&mut a, &mut b] {
            if let Some(status) = v.get_mut("status") {
                status["reads"] = Value::Null; // timings differ
            }
            // The two simulations start a moment apart: their objects' creation times may fall
            // in different seconds.
            forget_timestamps(v);
        }
        assert_eq!(a, b, "{path}");
    }
    let pooled_stats = pooled.dashboard.stats();
    let naive_stats = naive.dashboard.stats();
    assert_eq!(pooled_stats.clusters.sessions_created, 3);
    assert!(
        naive_stats.clusters.sessions_created > 3 * 2,
        "{naive_stats:?}"
    );
    assert!(naive_stats.inspector_entries > pooled_stats.inspector_entries);
    assert!(naive_stats.middleware_buffered_bytes > 0);
    assert_eq!(pooled_stats.middleware_buffered_bytes, 0);
}

/// Replace every `created` / `last_seen` / `creation_timestamp` value with null, recursively.
fn forget_timestamps(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (name, v) in map.iter_mut() {
                if matches!(
                    name.as_str(),
                    "created" | "last_seen" | "creation_timestamp"
                ) {
                    *v = Value::Null;
                } else {
                    forget_timestamps(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(forget_timestamps),
        _ => {}
    }
}
