//! `/version`, `/api`, `/apis`, `/api/v1`, `/apis/{batch,apps}[/v1]` discovery documents.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    ServerAddressByClientCIDR,
};
use k8s_openapi::apimachinery::pkg::version::Info;

/// The groups the server serves besides the core group.
const GROUPS: [&str; 2] = ["batch", "apps"];

fn resource(name: &str, singular: &str, kind: &str, namespaced: bool) -> APIResource {
    let verbs = if name.contains('/') {
        vec!["get".into()]
    } else {
        vec!["get".into(), "list".into()]
    };
    APIResource {
        name: name.into(),
        singular_name: singular.into(),
        kind: kind.into(),
        namespaced,
        verbs,
        ..APIResource::default()
    }
}

/// The `/version` answer.
pub(crate) fn version() -> Info {
    Info {
        major: "1".into(),
        minor: "33".into(),
        git_version: "v1.33.0-testkit".into(),
        git_commit: "0000000000000000000000000000000000000000".into(),
        git_tree_state: "clean".into(),
        build_date: "2025-01-01T00:00:00Z".into(),
        go_version: "go1.24".into(),
        compiler: "gc".into(),
        platform: "linux/amd64".into(),
        ..Info::default()
    }
}

/// The `/api` answer.
pub(crate) fn core_versions(server_address: &str) -> APIVersions {
    APIVersions {
        versions: vec!["v1".into()],
        server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
            client_cidr: "0.0.0.0/0".into(),
            server_address: server_address.into(),
        }],
    }
}

/// `/apis/<group>` for a served group.
pub(crate) fn group(name: &str) -> Option<APIGroup> {
    GROUPS.contains(&name).then(|| {
        let v1 = GroupVersionForDiscovery {
            group_version: format!("{name}/v1"),
            version: "v1".into(),
        };
        APIGroup {
            name: name.into(),
            preferred_version: Some(v1.clone()),
            versions: vec![v1],
            ..APIGroup::default()
        }
    })
}

/// The `/apis` answer.
pub(crate) fn groups() -> APIGroupList {
    APIGroupList {
        groups: GROUPS.iter().filter_map(|g| group(g)).collect(),
    }
}

/// `/api/v1` (group "") or `/apis/<group>/v1`.
pub(crate) fn resources(group: &str) -> Option<APIResourceList> {
    let (group_version, resources) = match group {
        "" => (
            "v1",
            vec![
                resource("configmaps", "configmap", "ConfigMap", true),
                resource("events", "event", "Event", true),
                resource("namespaces", "namespace", "Namespace", false),
                resource("nodes", "node", "Node", false),
                resource("pods", "pod", "Pod", true),
                resource("pods/log", "", "Pod", true),
            ],
        ),
        "batch" => ("batch/v1", vec![resource("jobs", "job", "Job", true)]),
        "apps" => (
            "apps/v1",
            vec![resource("daemonsets", "daemonset", "DaemonSet", true)],
        ),
        _ => return None,
    };
    Some(APIResourceList {
        group_version: group_version.into(),
        resources,
    })
}
