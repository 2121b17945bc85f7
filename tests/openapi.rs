//! docs/openapi.json against the running server: every documented path is
//! routed on the listener it names, with exactly the documented methods
//! (asked with OPTIONS, which answers `Allow` without side effects).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

#[test]
fn every_documented_route_is_served_with_its_methods() {
    let doc: Value = serde_json::from_str(include_str!("../docs/openapi.json")).expect("docs/openapi.json is JSON");
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
            .filter(|key| ["get", "post", "delete", "put", "patch"].contains(&key.as_str()))
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
