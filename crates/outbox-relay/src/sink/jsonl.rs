//! `stdout:` and `file:PATH`: one JSON object per line,
//! `{"topic", "key", "headers": {…}, "value": …}`.
//!
//! Every line can be written; what fails is the output (disk full, quota, I/O error, a closed
//! pipe), never the message: every failure here is [`ErrorKind::Unavailable`], and the events
//! wait, uncounted, until the operator makes room.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::value::RawValue;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::Mutex;

use super::{ErrorKind, Message, Sink, SinkError};

/// Formats one message as a JSON line (with the trailing newline).
pub(crate) fn line(message: &Message) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        topic: &'a str,
        key: &'a str,
        headers: serde_json::Map<String, serde_json::Value>,
        value: Value<'a>,
    }
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Value<'a> {
        Json(&'a RawValue),
        Text(std::borrow::Cow<'a, str>),
    }
    let value = match std::str::from_utf8(&message.value) {
        Ok(text) => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => Value::Json(raw),
            Err(_) => Value::Text(text.into()),
        },
        Err(_) => Value::Text(String::from_utf8_lossy(&message.value)),
    };
    let headers = message
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut out = serde_json::to_vec(&Line {
        topic: &message.topic,
        key: &message.key,
        headers,
        value,
    })
    .unwrap_or_default();
    out.push(b'\n');
    out
}

struct Lines<W> {
    out: Mutex<BufWriter<W>>,
}

impl<W: AsyncWrite + Unpin + Send> Lines<W> {
    fn new(w: W) -> Self {
        Lines {
            out: Mutex::new(BufWriter::with_capacity(256 * 1024, w)),
        }
    }

    async fn write(&self, message: &Message) -> Result<(), SinkError> {
        let bytes = line(message);
        self.out
            .lock()
            .await
            .write_all(&bytes)
            .await
            .map_err(|e| io_error("write", &e))
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.out
            .lock()
            .await
            .flush()
            .await
            .map_err(|e| io_error("flush", &e))
    }
}

/// A failed write, flush or fsync: the output's failure, not the message's.
fn io_error(what: &str, e: &std::io::Error) -> SinkError {
    SinkError {
        kind: ErrorKind::Unavailable,
        message: format!("{what} failed: {e}"),
        retry_after: None,
    }
}

/// Writes messages to standard output as JSON lines. Delivered = written and flushed.
pub struct StdoutSink {
    lines: Lines<tokio::io::Stdout>,
}

impl StdoutSink {
    /// A sink on this process's stdout.
    pub fn new() -> Self {
        StdoutSink {
            lines: Lines::new(tokio::io::stdout()),
        }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        self.lines.write(message).await
    }
    async fn flush(&self) -> Result<(), SinkError> {
        self.lines.flush().await
    }
    fn describe(&self) -> String {
        "stdout".into()
    }
}

/// Appends messages to a file as JSON lines. Delivered = written, flushed and `fsync`ed at the
/// end of each batch, so an acknowledged event survives a crash of the machine.
pub struct FileSink {
    path: PathBuf,
    lines: Lines<tokio::fs::File>,
}

impl FileSink {
    /// Opens (creating if needed) `path` for appending.
    pub async fn create(path: impl AsRef<Path>) -> Result<Self, crate::Error> {
        let path = path.as_ref().to_path_buf();
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| {
                crate::Error::Config(format!("cannot open sink file {}: {e}", path.display()))
            })?;
        Ok(FileSink {
            path,
            lines: Lines::new(file),
        })
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        self.lines.write(message).await
    }
    async fn flush(&self) -> Result<(), SinkError> {
        let mut out = self.lines.out.lock().await;
        out.flush().await.map_err(|e| io_error("flush", &e))?;
        out.get_ref()
            .sync_data()
            .await
            .map_err(|e| io_error("fsync", &e))
    }
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_failures_are_the_sinks() {
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        let e = io_error("write", &full);
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.starts_with("write failed: "), "{e}");
    }

    /// A full disk: the write fails as unavailable (Linux's /dev/full).
    #[tokio::test]
    async fn a_full_disk_is_unavailable() {
        if !Path::new("/dev/full").exists() {
            return;
        }
        let sink = FileSink::create("/dev/full").await.expect("open /dev/full");
        let m = Message {
            id: uuid::Uuid::nil(),
            topic: "t".into(),
            key: "k".into(),
            value: bytes::Bytes::from_static(b"{}"),
            headers: vec![],
        };
        sink.publish(&m).await.expect("buffered");
        let e = sink.flush().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    }

    #[test]
    fn line_embeds_json_values_and_quotes_others() {
        let mut m = Message {
            id: uuid::Uuid::nil(),
            topic: "order-events".into(),
            key: "o-1".into(),
            value: bytes::Bytes::from_static(br#"{"a":1}"#),
            headers: vec![("id".into(), "x".into())],
        };
        assert_eq!(
            String::from_utf8(line(&m)).unwrap(),
            "{\"topic\":\"order-events\",\"key\":\"o-1\",\"headers\":{\"id\":\"x\"},\"value\":{\"a\":1}}\n"
        );
        m.value = bytes::Bytes::from_static(b"plain");
        assert!(String::from_utf8(line(&m))
            .unwrap()
            .contains("\"value\":\"plain\""));
    }
}
