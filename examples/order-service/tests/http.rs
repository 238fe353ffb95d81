//! The HTTP API, in-process (tower `oneshot`), and the `order-service` binary end to end.
#![cfg(feature = "http")]

#[macro_use]
mod common;

use std::process::Stdio;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use common::{events, within};
use order_service::OrderService;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tower::ServiceExt;

on_both_backends!(http_api);

/// Sends one request to `app`; the body is parsed as JSON (`Null` when empty).
async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (
        status,
        headers,
        if bytes.is_empty() { Value::Null } else { json },
    )
}

async fn http_api(service: &OrderService) {
    let app = order_service::http::router(service.clone());
    assert_eq!(call(&app, "GET", "/healthz", None).await.0, StatusCode::OK);

    let new_order = json!({
        "customer_id": "customer-1",
        "items": [{"sku": "book-42", "quantity": 2, "price": 12.5}],
        "total": 25.0,
    });
    let (status, headers, created) = call(&app, "POST", "/orders", Some(new_order)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(headers[header::LOCATION], format!("/orders/{id}"));
    assert_eq!(created["customer_id"], "customer-1");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["items"][0]["sku"], "book-42");
    assert_eq!(created["cancelled_at"], Value::Null);

    let (status, _, fetched) = call(&app, "GET", &format!("/orders/{id}"), None).await;
    assert_eq!((status, &fetched), (StatusCode::OK, &created));

    let cancel = || Some(json!({"reason": "changed my mind"}));
    let (status, _, cancelled) =
        call(&app, "POST", &format!("/orders/{id}/cancel"), cancel()).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["cancellation_reason"], "changed my mind");

    let (status, _, again) = call(&app, "POST", &format!("/orders/{id}/cancel"), cancel()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(again["error"], format!("order {id} is already cancelled"));

    let unknown = uuid::Uuid::now_v7();
    let (status, _, missing) = call(&app, "GET", &format!("/orders/{unknown}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["error"], format!("order {unknown} not found"));
    let (status, _, _) = call(&app, "POST", &format!("/orders/{unknown}/cancel"), cancel()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, _) = call(&app, "GET", "/orders/not-a-uuid", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&app, "POST", "/orders", Some(json!({"customer_id": "c"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let types: Vec<String> = events(service)
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types,
        ["OrderCreated", "OrderCancelled"],
        "refused requests write no event"
    );
}

fn binary() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("BIND")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn binary_rejects_a_bad_database_url_without_panicking() {
    for (url, expected) in [
        (None, "DATABASE_URL is not set"),
        (
            Some("oracle://root@localhost/shop"),
            "DATABASE_URL must start with postgres://",
        ),
        (
            Some("mysql://root@127.0.0.1:1/shop"),
            "cannot connect to MySQL",
        ),
        (
            Some("postgres://postgres@localhost:notaport/db"),
            "invalid DATABASE_URL",
        ),
        // Port 1: nothing listens there, so the connection is refused at once.
        (
            Some("postgres://postgres@127.0.0.1:1/db"),
            "cannot connect to PostgreSQL",
        ),
        (
            Some("sqlite:/nonexistent-dir/orders.db"),
            "cannot open the SQLite database",
        ),
    ] {
        let mut cmd = binary();
        if let Some(url) = url {
            cmd.env("DATABASE_URL", url).env("BIND", "127.0.0.1:0");
        }
        let out = within(30, "order-service", cmd.output()).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url:?}: {stderr}");
        assert!(stderr.contains(expected), "{url:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{url:?}: {stderr}");
    }
}

#[tokio::test]
async fn binary_serves_http_on_sqlite() {
    let path = std::env::temp_dir().join(format!(
        "order-service-bin-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let mut child = binary()
        .env("DATABASE_URL", format!("sqlite:{}", path.display()))
        .env("BIND", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = within(30, "the listening log line", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, addr)) = line.split_once("addr=") {
                return addr.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("order-service exited before listening");
    })
    .await;

    let response = within(30, "GET /healthz", async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    })
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    child.kill().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
