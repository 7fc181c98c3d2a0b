//! The Kubernetes API routes: discovery, list/get for each fixture kind, and pod logs.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta};
use k8s_openapi::{List, ListableResource, Metadata};
use serde::Serialize;

use super::discovery;
use super::fixtures::Fixtures;
use super::respond::{Resp, json, status, text};
use super::select::{FieldSelector, LabelSelector};

/// An object kind the server stores: which field selectors it supports and how to read them.
trait Stored: ListableResource + Metadata<Ty = ObjectMeta> + Serialize + Clone {
    /// The fields beyond `metadata.name` / `metadata.namespace` this kind can be selected by.
    const FIELDS: &'static [&'static str] = &[];

    /// The value of one of [`Stored::FIELDS`].
    fn field(&self, _field: &str) -> Option<String> {
        None
    }
}

impl Stored for Node {
    const FIELDS: &'static [&'static str] = &["spec.unschedulable"];
    fn field(&self, _: &str) -> Option<String> {
        let unschedulable = self.spec.as_ref().and_then(|s| s.unschedulable);
        Some(unschedulable.unwrap_or(false).to_string())
    }
}

impl Stored for Pod {
    const FIELDS: &'static [&'static str] = &["spec.nodeName", "status.phase"];
    fn field(&self, field: &str) -> Option<String> {
        match field {
            "spec.nodeName" => self.spec.as_ref()?.node_name.clone(),
            _ => self.status.as_ref()?.phase.clone(),
        }
    }
}

impl Stored for Event {
    const FIELDS: &'static [&'static str] = &[
        "type",
        "reason",
        "involvedObject.kind",
        "involvedObject.name",
        "involvedObject.namespace",
    ];
    fn field(&self, field: &str) -> Option<String> {
        let obj = &self.involved_object;
        match field {
            "type" => self.type_.clone(),
            "reason" => self.reason.clone(),
            "involvedObject.kind" => obj.kind.clone(),
            "involvedObject.name" => obj.name.clone(),
            _ => obj.namespace.clone(),
        }
    }
}

impl Stored for Job {}
impl Stored for DaemonSet {}
impl Stored for ConfigMap {}
impl Stored for Namespace {}

/// Parsed query parameters.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(query: Option<&str>) -> Self {
        let pairs = url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned();
        Self(pairs.collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn number(&self, key: &str) -> Result<Option<usize>, String> {
        self.get(key)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| format!("{key}: invalid value {v:?}"))
            })
            .transpose()
    }
}

fn list<T: Stored>(items: &[T], namespace: Option<&str>, params: &Params) -> Resp {
    let labels = match LabelSelector::parse(params.get("labelSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return status(400, &e),
    };
    let fields = match FieldSelector::parse(params.get("fieldSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return status(400, &e),
    };
    let mut out = Vec::new();
    for item in items {
        let meta = item.metadata();
        if namespace.is_some() && meta.namespace.as_deref() != namespace {
            continue;
        }
        let lookup = |f: &str| match f {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone(),
            other => item.field(other),
        };
        let supported =
            |f: &str| matches!(f, "metadata.name" | "metadata.namespace") || T::FIELDS.contains(&f);
        match fields.matches(lookup, supported) {
            Err(e) => return status(400, &e),
            Ok(false) => continue,
            Ok(true) => {}
        }
        if labels.matches(meta.labels.as_ref()) {
            out.push(item.clone());
        }
    }
    let list = List {
        items: out,
        metadata: ListMeta {
            resource_version: Some("1".into()),
            ..ListMeta::default()
        },
    };
    json(200, &list)
}

fn find<'a, T: Stored>(items: &'a [T], namespace: Option<&str>, name: &str) -> Option<&'a T> {
    items.iter().find(|item| {
        let meta = item.metadata();
        meta.name.as_deref() == Some(name)
            && (namespace.is_none() || meta.namespace.as_deref() == namespace)
    })
}

fn get<T: Stored>(items: &[T], namespace: Option<&str>, name: &str) -> Resp {
    match find(items, namespace, name) {
        Some(item) => json(200, item),
        None => status(
            404,
            &format!("{} \"{name}\" not found", T::URL_PATH_SEGMENT),
        ),
    }
}

fn pod_log(fixtures: &Fixtures, namespace: &str, name: &str, params: &Params) -> Resp {
    let Some(pod) = find(&fixtures.pods, Some(namespace), name) else {
        return status(404, &format!("pods \"{name}\" not found"));
    };
    if let Some(container) = params.get("container") {
        let known = pod.spec.iter().flat_map(|s| &s.containers);
        if !known.into_iter().any(|c| c.name == container) {
            let msg = format!("container {container} is not valid for pod {name}");
            return status(400, &msg);
        }
    }
    let (tail, limit) = match (params.number("tailLines"), params.number("limitBytes")) {
        (Ok(t), Ok(l)) => (t, l),
        (Err(e), _) | (_, Err(e)) => return status(400, &e),
    };
    let key = (namespace.to_owned(), name.to_owned());
    let log = fixtures.logs.get(&key).map(String::as_str).unwrap_or("");
    let mut out = match tail {
        Some(n) => {
            let lines: Vec<&str> = log.split_inclusive('\n').collect();
            lines[lines.len().saturating_sub(n)..].concat()
        }
        None => log.to_owned(),
    };
    if let Some(limit) = limit {
        out.truncate(limit);
    }
    text(out)
}

fn namespaces(fixtures: &Fixtures) -> Vec<Namespace> {
    let names = fixtures.namespaces();
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        resource_version: Some("1".into()),
        ..ObjectMeta::default()
    };
    names
        .into_iter()
        .map(|n| Namespace {
            metadata: meta(n),
            ..Namespace::default()
        })
        .collect()
}

/// Route one GET of the Kubernetes API. `server` is the address for `/api` discovery.
pub(crate) fn get_api(fixtures: &Fixtures, path: &str, query: Option<&str>, server: &str) -> Resp {
    let params = Params::parse(query);
    if params
        .get("watch")
        .is_some_and(|w| w != "false" && w != "0")
    {
        return status(
            400,
            "watch is not supported by the testkit Kubernetes test server",
        );
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest): (&str, &[&str]) = match segments.as_slice() {
        ["version"] => return json(200, &discovery::version()),
        ["api"] => return json(200, &discovery::core_versions(server)),
        ["apis"] => return json(200, &discovery::groups()),
        ["apis", g] => {
            return discovery::group(g)
                .map(|d| json(200, &d))
                .unwrap_or_else(|| not_found(path));
        }
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, "v1", rest @ ..] => (*g, rest),
        _ => return not_found(path),
    };
    if rest.is_empty() {
        return discovery::resources(group)
            .map(|d| json(200, &d))
            .unwrap_or_else(|| not_found(path));
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] => (Some(*ns), [&[*plural][..], more].concat()),
        other => (None, other.to_vec()),
    };
    let f = fixtures;
    let p = &params;
    match (group, namespace, rest.as_slice()) {
        ("", None, ["namespaces"]) => list(&namespaces(f), None, p),
        ("", None, ["namespaces", name]) => get(&namespaces(f), None, name),
        ("", None, ["nodes"]) => list(&f.nodes, None, p),
        ("", None, ["nodes", name]) => get(&f.nodes, None, name),
        ("", ns, ["pods"]) => list(&f.pods, ns, p),
        ("", Some(ns), ["pods", name]) => get(&f.pods, Some(ns), name),
        ("", Some(ns), ["pods", name, "log"]) => pod_log(f, ns, name, p),
        ("", ns, ["configmaps"]) => list(&f.configmaps, ns, p),
        ("", Some(ns), ["configmaps", name]) => get(&f.configmaps, Some(ns), name),
        ("", ns, ["events"]) => list(&f.events, ns, p),
        ("", Some(ns), ["events", name]) => get(&f.events, Some(ns), name),
        ("batch", ns, ["jobs"]) => list(&f.jobs, ns, p),
        ("batch", Some(ns), ["jobs", name]) => get(&f.jobs, Some(ns), name),
        ("apps", ns, ["daemonsets"]) => list(&f.daemonsets, ns, p),
        ("apps", Some(ns), ["daemonsets", name]) => get(&f.daemonsets, Some(ns), name),
        _ => not_found(path),
    }
}

fn not_found(path: &str) -> Resp {
    status(
        404,
        &format!("the server could not find the requested resource ({path})"),
    )
}
