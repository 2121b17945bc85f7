//! docs/openapi.json against the running server: every documented path is
//! routed on the listener it names, with exactly the documented methods
//! (asked with OPTIONS, which answers `Allow` without side effects), and the
//! 401 every api route answers without the key is documented. Fuzzing the
//! routes against the description is scripts/api-fuzz.sh (schemathesis).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "delete", "put", "patch"];

fn description() -> Value {
    serde_json::from_str(include_str!("../docs/openapi.json")).expect("docs/openapi.json is JSON")
}

#[test]
fn every_documented_route_is_served_with_its_methods() {
    let doc = description();
    let server = Server::start(&["--demo"]);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 15, "the description lists the routes: {}", paths.len());
    for (template, item) in paths {
        let path = template.replace("{user}", "alice").replace("{room}", "lobby").replace("{tenant}", "acme");
        let listeners = match item["x-listener"].as_str() {
            Some("public") => vec![server.public],
            Some("api") => vec![server.api],
            Some("both") => vec![server.public, server.api],
            other => panic!("{template}: x-listener {other:?}"),
        };
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|key| METHODS.contains(&key.as_str()))
            .map(|method| method.to_uppercase())
            .collect();
        assert!(!documented.is_empty(), "{template} documents no method");
        for addr in listeners {
            let answer = http(addr, "OPTIONS", &path, &[], b"");
            assert_eq!(answer.status, 204, "OPTIONS {path} on {addr}: {}", answer.text());
            let allowed: BTreeSet<String> = answer
                .header("allow")
                .expect("Allow")
                .split(',')
                .map(|method| method.trim().to_owned())
                .filter(|method| method != "HEAD" && method != "OPTIONS")
                .collect();
            assert_eq!(allowed, documented, "{path} on {addr}: served vs documented methods");
        }
    }
}

/// Every `{name}` of a path is a path parameter of each of its operations
/// (OPTIONS /t/{tenant}/sse once lacked `tenant`, which schemathesis
/// refused as an invalid description).
#[test]
fn every_operation_declares_the_parameters_of_its_path() {
    let doc = description();
    let resolve = |param: &Value| -> Value {
        match param["$ref"].as_str() {
            Some(reference) => {
                let name = reference.strip_prefix("#/components/parameters/").expect("a parameter reference");
                doc["components"]["parameters"][name].clone()
            }
            None => param.clone(),
        }
    };
    let path_params = |list: &Value| -> BTreeSet<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(resolve)
            .filter(|param| param["in"] == "path")
            .map(|param| param["name"].as_str().expect("a parameter name").to_owned())
            .collect()
    };
    for (template, item) in doc["paths"].as_object().expect("paths") {
        let placeholders: BTreeSet<String> = template
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        for (method, operation) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) && method != "options" {
                continue;
            }
            let mut declared = path_params(&item["parameters"]);
            declared.extend(path_params(&operation["parameters"]));
            assert_eq!(declared, placeholders, "{} {template}: declared path parameters", method.to_uppercase());
        }
    }
}

/// With --api-key, every api route answers 401 with `WWW-Authenticate:
/// Bearer` to a request without the key, and documents that 401 (twelve
/// routes once did not). The key is checked before anything else, so the
/// admin routes change nothing here.
#[test]
fn api_routes_document_the_401_they_answer_without_the_key() {
    let doc = description();
    let server = Server::start(&["--api-key", "openapi-test-key"]);
    for (template, item) in doc["paths"].as_object().expect("paths") {
        if item["x-listener"] != "api" {
            continue;
        }
        let path = template.replace("{user}", "alice").replace("{room}", "lobby").replace("{tenant}", "acme");
        for (method, operation) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let method = method.to_uppercase();
            let answer = http(server.api, &method, &path, &[], b"");
            assert_eq!(answer.status, 401, "{method} {path} without the key: {}", answer.text());
            assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{method} {path}");
            assert!(
                operation["responses"]["401"].is_object(),
                "{method} {template} answers 401 without the key; docs/openapi.json does not document it"
            );
        }
    }
    let health = http(server.api, "GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "the server still runs after POST /v1/admin/shutdown without the key");
}
