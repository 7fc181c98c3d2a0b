//! A6: no plaintext key in the store, in logs (at TRACE), in `Debug`/`Display` output.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apikey_cache::{ApiKeyCache, AuthError, CacheConfig, MemoryStore};
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

// covers A6 (and A9's "says so in logs"): run every path — issue, hit, unknown, revoked,
// malformed, write conflict, failed reload — with TRACE logging captured, then look for the
// keys everywhere they could leak.
#[tokio::test(start_paused = true)]
async fn plaintext_keys_never_reach_store_logs_or_debug() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = MemoryStore::new();
    let a = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let b = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    let revoked = a.issue_key(&account).await.expect("issue");
    b.refresh().await.expect("b loads");
    a.revoke_key(&revoked.identity.key).await.expect("revoke");
    let plain = issued.secret.expose().to_string();
    let revoked_plain = revoked.secret.expose().to_string();
    let unknown = "ak_neverIssuedButPresented000000000000000000";

    assert!(b.authenticate(&plain).await.is_ok());
    let mut errors = vec![
        a.authenticate(&revoked_plain).await.expect_err("revoked"),
        b.authenticate(unknown).await.expect_err("unknown"),
        b.authenticate(&format!("{plain} "))
            .await
            .expect_err("malformed"),
    ];
    b.issue_key(&account).await.expect("write after a conflict"); // b's version is stale
    store.fail_loads(true);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(
        a.authenticate(&plain).await.is_ok(),
        "served from the old snapshot"
    );
    errors.push(
        a.authenticate("ak_anotherUnknownKey0000000000000000000000000")
            .await
            .expect_err("unavailable"),
    );
    assert!(matches!(errors[3], AuthError::Unavailable { .. }));

    let stored = String::from_utf8(store.document().expect("doc").to_json()).expect("utf8");
    let log_text = logs.text();
    assert!(
        log_text.contains("keeping the previous snapshot"),
        "the failed reload is logged: {log_text}"
    );
    let mut shown = vec![
        stored,
        log_text,
        format!("{issued:?} {revoked:?} {a:?} {b:?}"),
        format!("{:?} {:?}", a.stats(), b.stats()),
        format!("{:?}", store.document()),
    ];
    for error in &errors {
        shown.push(format!("{error} {error:?}"));
    }
    for text in &shown {
        for secret in [plain.as_str(), revoked_plain.as_str(), unknown] {
            // The distinctive random part, not the public `ak_` prefix.
            assert!(!text.contains(&secret[3..]), "key leaked into: {text}");
        }
    }
}
