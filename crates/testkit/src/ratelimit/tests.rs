//! Tests of the rate-limiting server, driven by a raw HTTP/1.1 client so connections are explicit.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Answer, RateLimitServer, RetryAfter};

/// A response head and whatever body was read.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// One keep-alive connection, spoken to by hand.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(server: &RateLimitServer) -> Raw {
        Raw {
            stream: TcpStream::connect(server.addr()).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, extra: &str, body: &[u8]) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n{extra}\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await.unwrap();
        self.stream.write_all(body).await.unwrap();
    }

    /// Read more bytes into the buffer; false at EOF or on a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response head, or None if the connection closed first.
    async fn head(&mut self) -> Option<Head> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 4);
                let mut lines = text.split("\r\n");
                let status = lines.next().unwrap().split(' ').nth(1).unwrap();
                let headers = lines
                    .map(|l| {
                        let (n, v) = l.split_once(':').unwrap();
                        (n.trim().to_string(), v.trim().to_string())
                    })
                    .collect();
                return Some(Head {
                    status: status.parse().unwrap(),
                    headers,
                });
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Read `len` body bytes.
    async fn body(&mut self, len: usize) -> Vec<u8> {
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed mid-body");
        }
        self.buf.drain(..len).collect()
    }

    async fn get(&mut self, path: &str) -> (Head, Vec<u8>) {
        self.send("GET", path, "", b"").await;
        let head = self.head().await.expect("a response");
        let body = self.body(head.content_length()).await;
        (head, body)
    }
}

#[tokio::test]
async fn answers_follow_queue_then_prelude_then_default() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(5));
    server.every_path_starts_with([Answer::too_many(1), Answer::status(503)]);
    server.script("/q", [Answer::status(502)]);
    let mut raw = Raw::connect(&server).await;

    let (first, _) = raw.get("/a").await;
    assert_eq!(
        (first.status, first.header("retry-after")),
        (429, Some("1"))
    );
    assert_eq!(raw.get("/a").await.0.status, 503);
    let (third, body) = raw.get("/a").await;
    assert_eq!((third.status, body), (200, b"xxxxx".to_vec()));
    // A queued answer comes first; the prelude still counts that path's requests.
    assert_eq!(raw.get("/q").await.0.status, 502);
    assert_eq!(raw.get("/q").await.0.status, 503);
    assert_eq!(server.requests_on("/a"), 3);
    let log = server.requests();
    assert_eq!(
        log.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [429, 503, 200, 502, 503]
    );
}

#[tokio::test]
async fn retry_after_forms_are_sent_as_scripted() {
    let server = RateLimitServer::start().await.unwrap();
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
    server.script(
        "/r",
        [
            Answer::status(503).retry_after(RetryAfter::At(past)),
            Answer::status(503).retry_after(RetryAfter::In(Duration::from_secs(120))),
            Answer::status(429).retry_after(RetryAfter::Raw("soon-ish".into())),
        ],
    );
    let mut raw = Raw::connect(&server).await;
    let (date, _) = raw.get("/r").await;
    assert_eq!(
        date.header("retry-after"),
        Some("Sun, 06 Nov 1994 08:49:37 GMT")
    );
    let (later, _) = raw.get("/r").await;
    let at = httpdate::parse_http_date(later.header("retry-after").unwrap()).unwrap();
    let ahead = at.duration_since(SystemTime::now()).unwrap();
    assert!(ahead > Duration::from_secs(100) && ahead <= Duration::from_secs(120));
    assert_eq!(
        raw.get("/r").await.0.header("retry-after"),
        Some("soon-ish")
    );
}

#[tokio::test]
async fn keep_alive_requests_share_one_accepted_connection() {
    let server = RateLimitServer::start().await.unwrap();
    let mut one = Raw::connect(&server).await;
    one.get("/x").await;
    one.get("/x").await;
    let stats = server.wait_until(|s| s.in_flight == 0).await;
    assert_eq!((stats.connections_opened, stats.requests_seen), (1, 2));

    let mut two = Raw::connect(&server).await;
    two.get("/x").await;
    let log = server.requests();
    assert_eq!(
        log.iter().map(|r| r.connection).collect::<Vec<_>>(),
        [1, 1, 2]
    );
    drop((one, two));
    let stats = server.wait_until(|s| s.connections_open == 0).await;
    assert_eq!(stats.connections_opened, 2);
}

#[tokio::test]
async fn stalled_bodies_stay_in_flight_until_the_client_goes_away() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(1000).stall_body_after(10));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(&server).await;
        raw.send("GET", "/slow", "", b"").await;
        let head = raw.head().await.unwrap();
        assert_eq!(head.content_length(), 1000);
        assert_eq!(raw.body(10).await.len(), 10);
        clients.push(raw);
    }
    let stats = server.wait_until(|s| s.in_flight == 3).await;
    assert_eq!((stats.peak_in_flight, stats.connections_open), (3, 3));

    drop(clients);
    let stats = server
        .wait_until(|s| s.in_flight == 0 && s.connections_open == 0)
        .await;
    assert_eq!(stats.peak_in_flight, 3);
}

#[tokio::test(start_paused = true)]
async fn slow_bodies_are_paced_in_tokio_time() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(400).slow_body(100, Duration::from_secs(2)));
    let mut raw = Raw::connect(&server).await;
    raw.send("GET", "/paced", "", b"").await;
    raw.head().await.unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(raw.body(400).await.len(), 400);
    // Four chunks, three pauses between them.
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    server.wait_until(|s| s.in_flight == 0).await;
}

#[tokio::test(start_paused = true)]
async fn head_delay_holds_the_request_in_flight() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(1).delay(Duration::from_secs(30)));
    let mut raw = Raw::connect(&server).await;
    let started = tokio::time::Instant::now();
    raw.get("/late").await;
    assert!(started.elapsed() >= Duration::from_secs(30));
}

#[tokio::test]
async fn hang_never_answers_and_reset_closes_the_connection() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/reset", [Answer::reset()]);
    server.script("/hang", [Answer::hang()]);

    let mut reset = Raw::connect(&server).await;
    reset.send("POST", "/reset", "", b"payload").await;
    assert!(reset.head().await.is_none(), "a reset answers nothing");

    let mut hang = Raw::connect(&server).await;
    hang.send("GET", "/hang", "authorization: Bearer t1\r\n", b"")
        .await;
    let stats = server
        .wait_until(|s| s.requests_seen == 2 && s.in_flight == 1)
        .await;
    assert_eq!(stats.connections_opened, 2);
    let log = server.requests();
    assert_eq!((log[0].method.as_str(), log[0].body_len), ("POST", 7));
    assert_eq!(log[1].authorization.as_deref(), Some("Bearer t1"));

    // Stopping the server cuts the hanging connection.
    drop(server);
    assert!(hang.head().await.is_none());
}

// Capacity mode: a token bucket (paused tokio time, so refills are exact), excess answered
// 429 + Retry-After (or 503), counted in all and per second, changeable while running.
#[tokio::test(start_paused = true)]
async fn capacity_mode_serves_the_bucket_and_rejects_the_excess() {
    use super::{Capacity, CapacityCounts};
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    let mut raw = Raw::connect(&server).await;
    assert_eq!(raw.get("/off").await.0.status, 200);
    assert_eq!(
        server.capacity_counts(),
        CapacityCounts::default(),
        "off: not counted"
    );

    server.set_capacity(Some(Capacity::per_second(10.0).burst(2.0)));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (head, _) = raw.get("/x").await;
        if head.status == 429 {
            assert_eq!(head.header("retry-after"), Some("1"));
        }
        statuses.push(head.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429, 429],
        "a burst of 2, then empty"
    );

    // 0.25 s at 10/s: 2.5 tokens, capped at the burst of 2.
    tokio::time::advance(Duration::from_millis(250)).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(raw.get("/x").await.0.status);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);

    // Raised while running, excess answered 503 now.
    server.set_capacity(Some(
        Capacity::per_second(100.0).reject_with(Answer::status(503)),
    ));
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut served = 0;
    for _ in 0..12 {
        match raw.get("/y").await.0.status {
            200 => served += 1,
            status => assert_eq!(status, 503),
        }
    }
    assert_eq!(served, 10, "burst of 10 (a tenth of 100/s)");

    let totals = server.capacity_counts();
    assert_eq!((totals.seen, totals.served, totals.rejected), (20, 14, 6));
    let timeline = server.capacity_timeline();
    assert_eq!(timeline.len(), 2);
    assert_eq!((timeline[0].seen, timeline[0].served), (8, 4));
    assert_eq!(
        (timeline[1].seen, timeline[1].served, timeline[1].rejected),
        (12, 10, 2)
    );
    server.reset_capacity_counts();
    assert!(server.capacity_timeline().is_empty());

    server.set_capacity(None);
    assert_eq!(raw.get("/z").await.0.status, 200);
    assert_eq!(server.capacity_counts().seen, 0);
}

// Flat for days (issue 24): the log keeps the newest requests only, the per-path counts stay exact.
#[test]
fn the_request_log_is_bounded_and_its_counts_exact() {
    let mut log = super::RequestLog::default();
    let seen = |i: usize| super::SeenRequest {
        method: "POST".into(),
        path: format!("/submit/{}", i % 3),
        connection: 1,
        authorization: None,
        body_len: i,
        answered: 200,
    };
    for i in 0..super::REQUEST_LOG_CAPACITY + 5 {
        log.push(seen(i));
    }
    assert_eq!(log.ring.len(), super::REQUEST_LOG_CAPACITY);
    assert_eq!(
        log.ring.front().map(|r| r.body_len),
        Some(5),
        "the oldest went"
    );
    let total: usize = log.by_path.values().sum();
    assert_eq!(total, super::REQUEST_LOG_CAPACITY + 5);
}
