//! Which requests are captured: polling prefixes matched on whole path segments.

use http::Method;

use crate::ConfigError;

/// The path prefixes of polling GETs, which the layer passes through untouched (I2).
///
/// # The matching rule
///
/// A request is a *polling* request, and is **not** captured, when its method is `GET` and its
/// path lies under one of the prefixes. Everything else is captured (I3): every other method
/// (`POST`, `PUT`, `PATCH`, `DELETE`, but also `HEAD` and `OPTIONS`), every GET outside the
/// prefixes, and a request whose method is unknown (`None`, I4).
///
/// "Under a prefix" is decided on whole path segments of the raw path, the way a router sees it:
///
/// | path | prefix `/api/monitor` |
/// |---|---|
/// | `/api/monitor`, `/api/monitor/`, `/api/monitor/aks` | polling |
/// | `/api/monitor?x=1` (query ignored) | polling |
/// | `/api/monitoring`, `/api/monitor-old` (not a whole segment) | captured |
/// | `/API/monitor` (paths are case-sensitive, like routes) | captured |
/// | `/api/%6Donitor/aks` (no percent-decoding: the raw path differs) | captured |
/// | `/api//monitor/aks` (an empty segment is a segment) | captured |
/// | `/api/monitor/../admin`, `/api/monitor/./aks`, `%2e%2e` forms (dot segments) | captured |
/// | `` (empty: read as `/`), `*`, `api/monitor` (not absolute) | captured |
///
/// When in doubt the rule captures: a wrongly captured polling call costs one bounded copy,
/// while a wrongly exempted call would be missing from the inspector.
///
/// Prefixes are normalised when added: a trailing `/` is dropped (`/api/monitor/` and
/// `/api/monitor` are the same prefix), and `/` alone makes every GET a polling GET. A prefix
/// must start with `/` and may not contain a query (`?`), a fragment (`#`), a `%`, whitespace or
/// control bytes, an empty segment (`//`) or a dot segment; such prefixes are rejected with
/// [`ConfigError::InvalidPrefix`].
///
/// ```
/// use http::Method;
/// use request_inspector::PollingPrefixes;
///
/// let polling = PollingPrefixes::new(["/api/monitor/", "/api/warmup"])?;
/// assert!(!polling.should_capture("/api/monitor/aks", Some(&Method::GET)));
/// assert!(polling.should_capture("/api/monitoring", Some(&Method::GET)));
/// assert!(polling.should_capture("/api/monitor/aks", Some(&Method::POST)));
/// assert!(polling.should_capture("/api/monitor/aks", None)); // unknown method: captured
/// # Ok::<(), request_inspector::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollingPrefixes {
    /// Normalised prefixes: no trailing slash; `/` is stored as the empty string.
    prefixes: Vec<Box<str>>,
}

impl PollingPrefixes {
    /// Prefixes from a list; fails on the first invalid one.
    pub fn new<I, S>(prefixes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut this = Self::default();
        for prefix in prefixes {
            this.push(prefix.as_ref())?;
        }
        Ok(this)
    }

    /// Add one prefix (a duplicate is ignored).
    pub fn push(&mut self, prefix: &str) -> Result<(), ConfigError> {
        let normalised = normalise(prefix)?;
        if !self.prefixes.iter().any(|p| **p == *normalised) {
            self.prefixes.push(normalised.into());
        }
        Ok(())
    }

    /// The normalised prefixes (`/` for the catch-all one).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.prefixes
            .iter()
            .map(|p| if p.is_empty() { "/" } else { &**p })
    }

    /// Whether `path` (a raw request path, optionally with a query) lies under a prefix.
    pub fn is_polling_path(&self, path: &str) -> bool {
        let path = match path.as_bytes().first() {
            // Nothing before the query or fragment: the path is `/`.
            None | Some(b'?' | b'#') => "/",
            Some(b'/') => path,
            Some(_) => return false,
        };
        // A prefix holds no `?`, `#`, `%`, empty or dot segment, so only what follows it needs
        // looking at (issue #23: a polling path is not scanned byte by byte from its start):
        // the query or fragment is cut off, the rest must start a new segment, and its own
        // segments may not be dot segments.
        self.prefixes.iter().any(|prefix| {
            let Some(rest) = path.strip_prefix(&**prefix) else {
                return false;
            };
            let end = rest
                .bytes()
                .position(|b| b == b'?' || b == b'#')
                .unwrap_or(rest.len());
            let rest = &rest[..end];
            (rest.is_empty() || rest.starts_with('/')) && !has_dot_segment(rest)
        })
    }

    /// Whether a request to `path` with `method` is captured (I3, I4): `false` only for a `GET`
    /// under a polling prefix. `None` (an unknown method) counts as non-GET, so it is captured.
    pub fn should_capture(&self, path: &str, method: Option<&Method>) -> bool {
        !(method == Some(&Method::GET) && self.is_polling_path(path))
    }
}

fn normalise(raw: &str) -> Result<String, ConfigError> {
    let reject = |reason| ConfigError::InvalidPrefix {
        prefix: raw.to_string(),
        reason,
    };
    if !raw.starts_with('/') {
        return Err(reject("it must start with `/`"));
    }
    if raw
        .bytes()
        .any(|b| !(0x21..=0x7e).contains(&b) || matches!(b, b'?' | b'#' | b'%'))
    {
        return Err(reject(
            "it must be a plain path: no query, fragment, `%`, whitespace or control bytes",
        ));
    }
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.split('/').skip(1).any(str::is_empty) {
        return Err(reject("it has an empty segment (`//`)"));
    }
    if has_dot_segment(trimmed) {
        return Err(reject("it has a `.` or `..` segment"));
    }
    Ok(trimmed.to_string())
}

/// `.` or `..`, also percent-encoded (`%2e`, `.%2E`, …): segments some servers resolve.
/// Runs on every request's path, so it allocates nothing (issue #23).
fn has_dot_segment(path: &str) -> bool {
    // Most paths have neither a `.` nor a `%`: one pass over the bytes settles them.
    path.bytes().any(|b| b == b'.' || b == b'%') && path.split('/').any(is_dot_segment)
}

/// Whether `segment` is one or two dots, each written `.`, `%2e` or `%2E`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor() -> PollingPrefixes {
        PollingPrefixes::new(["/api/monitor", "/api/warmup/"]).unwrap()
    }

    // covers I2: segment matching, not raw string prefix matching.
    #[test]
    fn prefix_matches_whole_segments_only() {
        let p = monitor();
        for path in [
            "/api/monitor",
            "/api/monitor/",
            "/api/monitor/aks",
            "/api/monitor/aks/",
            "/api/monitor/aks?cluster=a",
            "/api/monitor?x=1",
            "/api/monitor#frag",
            "/api/warmup",
            "/api/warmup/x",
        ] {
            assert!(p.is_polling_path(path), "{path} should be polling");
        }
        for path in [
            "/api/monitoring",
            "/api/monitor-old/aks",
            "/api/monito",
            "/api",
            "/",
            "",
            "*",
            "api/monitor",
            "/API/monitor/aks",
            "/api/Monitor",
            "/api/%6Donitor/aks",
            "/api//monitor/aks",
            "//api/monitor",
            "/api/monitor/../admin",
            "/api/monitor/./aks",
            "/api/monitor/%2e%2e/admin",
            "/api/monitor/.%2E/admin",
            "/api/warmups",
        ] {
            assert!(!p.is_polling_path(path), "{path} should be captured");
        }
    }

    #[test]
    fn prefixes_are_normalised_and_deduplicated() {
        let p = PollingPrefixes::new(["/api/monitor/", "/api/monitor", "/"]).unwrap();
        assert_eq!(p.iter().collect::<Vec<_>>(), ["/api/monitor", "/"]);
        // `/` makes every (well-formed) GET a polling GET.
        assert!(p.is_polling_path("/anything/at/all"));
        assert!(p.is_polling_path(""));
        assert!(!p.is_polling_path("/a/../b"));
    }

    #[test]
    fn malformed_prefixes_are_typed_errors() {
        for bad in [
            "",
            "api/monitor",
            "/api//monitor",
            "/api/monitor//",
            "/api/../monitor",
            "/api/./monitor",
            "/api/%2e%2e",
            "/api/monitor?x=1",
            "/api/monitor#x",
            "/api/mon itor",
            "/api/\u{e9}",
        ] {
            let err = PollingPrefixes::new([bad]).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidPrefix { ref prefix, .. } if prefix == bad),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn dot_segments_are_recognised_in_every_spelling() {
        for segment in [".", "..", "%2e", "%2E", ".%2e", "%2E.", "%2e%2E"] {
            assert!(is_dot_segment(segment), "{segment}");
        }
        for segment in [
            "",
            "...",
            "%2e%2e%2e",
            "a",
            ".a",
            "a.",
            "%2",
            "%2f",
            "%2e%",
            ".%2",
            "%3e",
            "..a",
        ] {
            assert!(!is_dot_segment(segment), "{segment}");
        }
    }

    // covers I3, I4: only GET is exempt; None is treated as non-GET.
    #[test]
    fn only_get_under_a_prefix_is_exempt() {
        let p = monitor();
        assert!(!p.should_capture("/api/monitor/aks", Some(&Method::GET)));
        for method in [
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ] {
            assert!(
                p.should_capture("/api/monitor/aks", Some(&method)),
                "{method}"
            );
        }
        assert!(p.should_capture("/api/monitor/aks", None));
        assert!(p.should_capture("/api/jobs", Some(&Method::GET)));
        assert!(PollingPrefixes::default().should_capture("/api/monitor", Some(&Method::GET)));
    }

    /// The rule as first written (scan the whole path, cut the query, match the prefix, then
    /// look for dot segments anywhere): the prefix-first matcher must agree with it everywhere.
    fn reference(prefixes: &PollingPrefixes, path: &str) -> bool {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        let path = &path[..end];
        let path = if path.is_empty() { "/" } else { path };
        if !path.starts_with('/') {
            return false;
        }
        let under = prefixes.prefixes.iter().any(|prefix| {
            path.strip_prefix(&**prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
        under && !path.split('/').any(is_dot_segment)
    }

    // covers I2: the fast matcher (issue #23) agrees with the reference rule on every path of
    // up to five pieces drawn from the spellings that matter.
    #[test]
    fn prefix_first_matching_agrees_with_the_reference_rule() {
        let pieces: Vec<&str> = "/ api monitor ing . .. %2e %2E. ? # x * /api/monitor /a.b/c"
            .split(' ')
            .collect();
        let sets = [
            monitor(),
            PollingPrefixes::new(["/"]).unwrap(),
            PollingPrefixes::new(["/api", "/api/monitor"]).unwrap(),
            PollingPrefixes::new(["/a.b/c"]).unwrap(),
        ];
        let mut paths = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            frontier = frontier
                .iter()
                .flat_map(|p| pieces.iter().map(move |piece| format!("{p}{piece}")))
                .collect();
            paths.extend(frontier.iter().cloned());
        }
        for set in &sets {
            for path in &paths {
                assert_eq!(
                    set.is_polling_path(path),
                    reference(set, path),
                    "{path:?} under {:?}",
                    set.prefixes
                );
            }
        }
    }
}
