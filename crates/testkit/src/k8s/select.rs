//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`) and field selectors (`=`, `==`, `!=`).

use std::collections::BTreeMap;

/// One parsed label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

/// Split on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn set_values(rest: &str) -> Option<Vec<String>> {
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl LabelSelector {
    /// Parse `app=warmup,tier!=db,env in (a,b),!legacy`; an error names the bad term.
    pub(crate) fn parse(selector: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(selector) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let bad = || format!("unable to parse requirement: {term:?}");
            let req = if let Some((key, value)) = term.split_once("!=") {
                LabelReq::NotEq(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once("==") {
                LabelReq::Eq(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once('=') {
                LabelReq::Eq(key.trim().into(), value.trim().into())
            } else if let Some((key, rest)) = term.split_once(" notin ") {
                LabelReq::NotIn(key.trim().into(), set_values(rest).ok_or_else(bad)?)
            } else if let Some((key, rest)) = term.split_once(" in ") {
                LabelReq::In(key.trim().into(), set_values(rest).ok_or_else(bad)?)
            } else if let Some(key) = term.strip_prefix('!') {
                LabelReq::NotExists(key.trim().into())
            } else {
                LabelReq::Exists(term.into())
            };
            let key = match &req {
                LabelReq::Eq(k, _)
                | LabelReq::NotEq(k, _)
                | LabelReq::In(k, _)
                | LabelReq::NotIn(k, _)
                | LabelReq::Exists(k)
                | LabelReq::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(bad());
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub(crate) fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        self.0.iter().all(|req| match req {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector: `(field, wanted value, equal?)` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    /// Parse `type=Warning,involvedObject.name!=x`.
    pub(crate) fn parse(selector: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, eq) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            terms.push((field.trim().to_owned(), value.trim().to_owned(), eq));
        }
        Ok(Self(terms))
    }

    /// Whether an object matches, given its field lookup (`None`: field not supported, which
    /// is an error like kube-apiserver's "field label not supported").
    pub(crate) fn matches(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
        supported: impl Fn(&str) -> bool,
    ) -> Result<bool, String> {
        for (field, value, eq) in &self.0 {
            if !supported(field) {
                return Err(format!("field label not supported: {field}"));
            }
            let actual = lookup(field).unwrap_or_default();
            if (actual == *value) != *eq {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn label_selectors_follow_kubernetes_semantics() {
        let l = labels(&[("app", "warmup"), ("tier", "web")]);
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(m(""));
        assert!(m("app=warmup"));
        assert!(m("app==warmup,tier"));
        assert!(!m("app!=warmup"));
        assert!(m("tier in (web, db)"));
        assert!(!m("tier notin (web)"));
        assert!(m("!legacy"));
        assert!(!m("legacy"));
        assert!(m("env notin (prod)"));
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn field_selectors_reject_unsupported_fields() {
        let sel = FieldSelector::parse("type=Warning,reason!=Pulled").unwrap();
        let lookup = |f: &str| match f {
            "type" => Some("Warning".to_owned()),
            "reason" => Some("BackOff".to_owned()),
            _ => None,
        };
        assert_eq!(sel.matches(lookup, |_| true), Ok(true));
        assert!(sel.matches(lookup, |f| f == "type").is_err());
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
