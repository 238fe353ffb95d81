//! The service on real databases: one order row and one event per write, or neither.

#[macro_use]
mod common;

use chrono::SecondsFormat;
use common::{events, execute, order_count, within, EventRow};
use order_service::{cancel_order_in, create_order_in, Item, OrderError, OrderPool, OrderService};
use serde_json::json;
use uuid::Uuid;

on_both_backends!(
    create_writes_one_order_and_one_event,
    cancel_writes_order_cancelled,
    cancel_of_unknown_order_is_not_found,
    second_cancel_is_already_cancelled,
    concurrent_cancels_write_one_event,
    rolled_back_transaction_leaves_nothing,
    composed_transaction_commits_everything,
    failing_outbox_insert_rolls_back_the_order,
    migrate_is_idempotent,
);

fn items() -> Vec<Item> {
    vec![
        Item {
            sku: "book-42".into(),
            quantity: 2,
            price: 12.5,
        },
        Item {
            sku: "pen-7".into(),
            quantity: 1,
            price: 1.99,
        },
    ]
}

fn iso(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

async fn create_writes_one_order_and_one_event(service: &OrderService) {
    let order = service
        .create_order("customer-1", items(), 26.99)
        .await
        .unwrap();
    assert_eq!(order.id.get_version_num(), 7);
    assert_eq!(order.customer_id, "customer-1");
    assert_eq!(order.items, items());
    assert_eq!(order.status, "pending");
    assert_eq!(
        (order.cancelled_at, order.cancellation_reason.as_deref()),
        (None, None)
    );

    assert_eq!(
        service.get_order(order.id).await.unwrap(),
        Some(order.clone())
    );
    assert_eq!(order_count(service).await, 1);
    assert_eq!(
        events(service).await,
        vec![EventRow {
            aggregate_type: "Order".into(),
            aggregate_id: order.id.hyphenated().to_string(),
            event_type: "OrderCreated".into(),
            payload: json!({
                "order_id": order.id.hyphenated().to_string(),
                "customer_id": "customer-1",
                "items": [
                    {"sku": "book-42", "quantity": 2, "price": 12.5},
                    {"sku": "pen-7", "quantity": 1, "price": 1.99},
                ],
                "total": 26.99,
                "status": "pending",
                "created_at": iso(order.created_at),
            }),
        }]
    );
}

async fn cancel_writes_order_cancelled(service: &OrderService) {
    let created = service
        .create_order("customer-2", items(), 26.99)
        .await
        .unwrap();
    let cancelled = service
        .cancel_order(created.id, "changed my mind")
        .await
        .unwrap();
    assert_eq!(cancelled.status, "cancelled");
    assert_eq!(
        cancelled.cancellation_reason.as_deref(),
        Some("changed my mind")
    );
    let cancelled_at = cancelled.cancelled_at.expect("cancelled_at is set");
    assert!(cancelled_at >= created.created_at);
    assert_eq!(
        (cancelled.created_at, &cancelled.items),
        (created.created_at, &created.items)
    );
    assert_eq!(
        service.get_order(created.id).await.unwrap(),
        Some(cancelled.clone())
    );

    let events = events(service).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].event_type, "OrderCreated");
    assert_eq!(
        events[1],
        EventRow {
            aggregate_type: "Order".into(),
            aggregate_id: created.id.hyphenated().to_string(),
            event_type: "OrderCancelled".into(),
            payload: json!({
                "order_id": created.id.hyphenated().to_string(),
                "reason": "changed my mind",
                "cancelled_at": iso(cancelled_at),
            }),
        }
    );
}

async fn cancel_of_unknown_order_is_not_found(service: &OrderService) {
    let id = Uuid::now_v7();
    match service.cancel_order(id, "nope").await {
        Err(OrderError::NotFound(missing)) => assert_eq!(missing, id),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(service.get_order(id).await.unwrap(), None);
    assert_eq!(events(service).await, vec![]);
    assert_eq!(order_count(service).await, 0);
}

async fn second_cancel_is_already_cancelled(service: &OrderService) {
    let order = service
        .create_order("customer-3", items(), 26.99)
        .await
        .unwrap();
    let first = service.cancel_order(order.id, "first").await.unwrap();
    match service.cancel_order(order.id, "second").await {
        Err(OrderError::AlreadyCancelled(id)) => assert_eq!(id, order.id),
        other => panic!("expected AlreadyCancelled, got {other:?}"),
    }
    assert_eq!(service.get_order(order.id).await.unwrap(), Some(first));
    let types: Vec<String> = events(service)
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types, ["OrderCreated", "OrderCancelled"]);
}

/// The row lock (PostgreSQL) or the early write lock (SQLite) lets exactly one cancel win.
async fn concurrent_cancels_write_one_event(service: &OrderService) {
    let order = service
        .create_order("customer-4", items(), 26.99)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let service = service.clone();
        tasks.spawn(async move {
            service
                .cancel_order(order.id, &format!("attempt {i}"))
                .await
        });
    }
    let results = within(60, "concurrent cancels", tasks.join_all()).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(OrderError::AlreadyCancelled(_))))
        .count();
    assert_eq!((won, refused), (1, 7), "{results:?}");
    let cancels = events(service)
        .await
        .into_iter()
        .filter(|e| e.event_type == "OrderCancelled");
    assert_eq!(cancels.count(), 1);
}

async fn rolled_back_transaction_leaves_nothing(service: &OrderService) {
    let order = match service.pool() {
        OrderPool::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let order = create_order_in(&mut tx, "customer-5", items(), 26.99)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            order
        }
        OrderPool::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let order = create_order_in(&mut tx, "customer-5", items(), 26.99)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            order
        }
        OrderPool::Mysql(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let order = create_order_in(&mut tx, "customer-5", items(), 26.99)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            order
        }
    };
    assert_eq!(service.get_order(order.id).await.unwrap(), None);
    assert_eq!(order_count(service).await, 0);
    assert_eq!(events(service).await, vec![]);
}

async fn composed_transaction_commits_everything(service: &OrderService) {
    let id = match service.pool() {
        OrderPool::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let order = create_order_in(&mut tx, "customer-6", items(), 26.99)
                .await
                .unwrap();
            cancel_order_in(&mut tx, order.id, "same transaction")
                .await
                .unwrap();
            tx.commit().await.unwrap();
            order.id
        }
        OrderPool::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            let order = create_order_in(&mut tx, "customer-6", items(), 26.99)
                .await
                .unwrap();
            cancel_order_in(&mut tx, order.id, "same transaction")
                .await
                .unwrap();
            tx.commit().await.unwrap();
            order.id
        }
        OrderPool::Mysql(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let order = create_order_in(&mut tx, "customer-6", items(), 26.99)
                .await
                .unwrap();
            cancel_order_in(&mut tx, order.id, "same transaction")
                .await
                .unwrap();
            tx.commit().await.unwrap();
            order.id
        }
    };
    let stored = service.get_order(id).await.unwrap().expect("committed");
    assert!(stored.is_cancelled());
    let types: Vec<String> = events(service)
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types, ["OrderCreated", "OrderCancelled"]);
}

/// The outbox insert fails after the order row was written: the order must not survive.
async fn failing_outbox_insert_rolls_back_the_order(service: &OrderService) {
    let before = service
        .create_order("customer-7", items(), 26.99)
        .await
        .unwrap();
    execute(
        service,
        "CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'outbox refused'; END $$;
         CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox
             FOR EACH ROW EXECUTE FUNCTION refuse_outbox();",
        "CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox
         FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'outbox refused'",
        "CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox
         BEGIN SELECT RAISE(ABORT, 'outbox refused'); END;",
    )
    .await;

    let err = service
        .create_order("customer-8", items(), 26.99)
        .await
        .unwrap_err();
    assert!(matches!(err, OrderError::Outbox(_)), "{err:?}");
    assert!(err.to_string().contains("outbox refused"), "{err}");
    assert_eq!(
        order_count(service).await,
        1,
        "only the order from before the trigger"
    );

    let err = service
        .cancel_order(before.id, "too late")
        .await
        .unwrap_err();
    assert!(matches!(err, OrderError::Outbox(_)), "{err:?}");
    assert_eq!(service.get_order(before.id).await.unwrap(), Some(before));
    assert_eq!(events(service).await.len(), 1);
}

async fn migrate_is_idempotent(service: &OrderService) {
    let order = service
        .create_order("customer-9", items(), 26.99)
        .await
        .unwrap();
    service.migrate().await.unwrap();
    service.migrate().await.unwrap();
    assert_eq!(service.get_order(order.id).await.unwrap(), Some(order));
    assert_eq!(events(service).await.len(), 1);
}
