//! The request id is recorded in a `request` tracing span (I1). Its own test binary, so the
//! thread-local subscriber sees only this test's spans.

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use request_inspector::{Inspector, InspectorConfig};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

type Fields = Vec<(String, String)>;

/// Records every span's name and fields.
#[derive(Debug, Default, Clone)]
struct Spans {
    spans: Arc<Mutex<Vec<(String, Fields)>>>,
    /// The entered spans, innermost last (one thread: the test is current-thread).
    stack: Arc<Mutex<Vec<u64>>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Vec::new();
        attrs.record(&mut Collect(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((attrs.metadata().name().to_string(), fields));
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        let index = span.into_u64() as usize - 1;
        values.record(&mut Collect(&mut spans[index].1));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, span: &Id) {
        self.stack.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, _: &Id) {
        self.stack.lock().unwrap().pop();
    }
}

// covers I1: the span carries the request id, method, path and (once known) the status, and
// the inner service runs inside it.
#[tokio::test(flavor = "current_thread")]
async fn request_id_is_recorded_in_a_span() {
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(spans.clone());
    let inspector = Inspector::new(InspectorConfig::new());
    let seen_inside = Arc::new(Mutex::new(None));
    let inside = Arc::clone(&seen_inside);
    let stack = Arc::clone(&spans.stack);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |_request: Request<_>| {
            let inside = Arc::clone(&inside);
            let stack = Arc::clone(&stack);
            async move {
                *inside.lock().unwrap() = stack.lock().unwrap().last().copied();
                Ok::<_, Infallible>(Response::new(Body::from("ok")))
            }
        }));
    let response = service
        .oneshot(
            Request::post("/api/jobs")
                .header("x-request-id", "span-id-1")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();

    let spans = spans.spans.lock().unwrap().clone();
    let (index, (_, fields)) = spans
        .iter()
        .enumerate()
        .find(|(_, (name, _))| name == "request")
        .expect("a request span");
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("request_id"), Some("span-id-1"));
    assert_eq!(get("method"), Some("POST"));
    assert_eq!(get("path"), Some("/api/jobs"));
    assert_eq!(get("status"), Some("200"));
    assert_eq!(*seen_inside.lock().unwrap(), Some(index as u64 + 1));
}
