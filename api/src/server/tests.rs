//! The served routes and the checked-in OpenAPI document agree.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request};
use tower::ServiceExt;

use super::peer::Peer;
use super::{app, openapi_json};
use crate::config::{Config, LauncherConfig};
use crate::core::launcher::HostAgentLauncher;
use crate::core::Core;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
}

#[test]
fn the_checked_in_document_is_the_generated_one() {
    let generated = openapi_json();
    if std::env::var_os("KILN_UPDATE_OPENAPI").is_some() {
        std::fs::write(checked_in(), &generated).expect("write openapi.json");
    }
    let stored = std::fs::read_to_string(checked_in()).unwrap_or_default();
    assert!(
        stored == generated,
        "api/openapi.json is out of date: run KILN_UPDATE_OPENAPI=1 cargo test -p kiln --lib checked_in"
    );
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let dir = std::env::temp_dir().join(format!("kiln-routes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = Config {
        state_dir: dir.clone(),
        launcher: LauncherConfig::HostAgent {
            agent: "/nonexistent".into(),
        },
        default_template: "none".into(),
        ..Config::default()
    };
    let core = Core::start_with(
        config,
        Arc::new(HostAgentLauncher {
            agent: "/nonexistent".into(),
        }),
    )
    .await
    .expect("core");
    let router = app(core.clone(), 1 << 20).layer(MockConnectInfo(Peer::default()));
    let doc: serde_json::Value = serde_json::from_str(&openapi_json()).expect("json");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let uri = path
            .replace("{id}", "sbx-none")
            .replace("{template}", "none")
            .replace("{path}", "a/b")
            .replace("{exec}", "exec-none");
        for method in item.as_object().expect("item").keys() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let req = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let resp = router.clone().oneshot(req).await.expect("response");
            let status = resp.status().as_u16();
            assert_ne!(status, 405, "{method} {uri} is documented but not routed");
            // Only a 404 can be the fallback (a 200 may be an endless
            // stream: its body is not read).
            if status == 404 {
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .expect("body");
                let text = String::from_utf8_lossy(&body);
                assert!(
                    !text.contains("no such route"),
                    "{method} {uri} is documented but not routed"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} operations documented");
    // And an undocumented route is the fallback.
    let req = Request::builder()
        .uri("/v1/nope")
        .body(Body::empty())
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), 404);
    // A served route asked with another method: 405 with a JSON error body.
    let req = Request::builder()
        .method("PURGE")
        .uri("/v1/health")
        .body(Body::empty())
        .expect("request");
    let resp = router.oneshot(req).await.expect("response");
    assert_eq!(resp.status(), 405);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let err: crate::ErrorBody = serde_json::from_slice(&body).expect("a JSON error body");
    assert_eq!(err.error.code, "method_not_allowed");
    core.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
