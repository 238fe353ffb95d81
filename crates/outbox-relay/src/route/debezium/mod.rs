//! Debezium compatibility: the outbox **EventRouter**'s options, read from a config section
//! (or, by the CDC source's `source::cdc::connector`, from a Kafka Connect connector
//! registration), and applied to outbox rows so the messages come out as Debezium's
//! `io.debezium.transforms.outbox.EventRouter` emits them. `options.rs` holds the options and
//! their parsing, `render.rs` their application to a row.
//!
//! What Debezium does, and so what this module does, for an inserted row:
//!
//! * **topic**: the `route.by.field` column's value put into `route.topic.replacement`
//!   (`${routedByValue}`, default `outbox.event.${routedByValue}`), as is (no case change);
//! * **key**: the `table.field.event.key` column (falling back to `table.field.event.payload.id`
//!   when the key is NULL);
//! * **value**: the `table.field.event.payload` column; a `json`/`jsonb`/text payload is a
//!   *string* unless `table.expand.json.payload` is on (then the JSON itself); with
//!   `table.fields.additional.placement` entries placed in the `envelope`, the value becomes
//!   `{"payload": …, "<alias>": …}`; a NULL payload is a tombstone (as is an empty one with
//!   `route.tombstone.on.empty.payload`);
//! * **headers**: `id` (the `table.field.event.id` column), then every `…:header[:alias]` entry.
//!
//! Kafka Connect then serialises key and value with the worker's converters. The relay assumes
//! the converters of Debezium's own outbox example, `JsonConverter` with `schemas.enable=false`
//! for both (so a text key `o-1` is written `"o-1"` and a jsonb payload `{"a": 1}` is written
//! `"{\"a\": 1}"`), unless the options name `key.converter` / `value.converter`
//! (`StringConverter` writes them as plain text).

mod options;
mod render;

pub use options::{
    AdditionalField, Converter, EventRouterOptions, InvalidOperation, Placement, EVENT_ROUTER,
};
pub use render::{json_string, json_value, minify_json, BoundColumns, Routed};
