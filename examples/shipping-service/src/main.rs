//! `shipping-service`: consumes the order-service's events from NATS JetStream or Kafka and
//! records shipments in its own database through the consumer inbox, effectively once.
//!
//! ```text
//! shipping-service --database-url sqlite:shipping.db --from nats://127.0.0.1:4222 --topic order-events
//! shipping-service --database-url postgres://app@db/shipping --from kafka://127.0.0.1:9092 --topic order-events
//! ```
//!
//! Runs until SIGINT or SIGTERM: the message in hand is finished (committed and acknowledged),
//! then it exits 0. A second signal exits at once. Exit status 2 for bad arguments or an
//! unreachable database at start, 1 for a failure at run time.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shipping_service::crash::Crash;
use shipping_service::kafka::KafkaSource;
use shipping_service::nats::NatsSource;
use shipping_service::{Error, Shipments, DEFAULT_NAME};
use tokio_util::sync::CancellationToken;

/// Consumes order events and records shipments, each event's effect exactly once.
#[derive(Debug, Parser)]
#[command(name = "shipping-service", version)]
struct Args {
    /// The service's own database: postgres://… or sqlite:path.db (created when missing).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,

    /// The broker: nats://host:4222 (JetStream) or kafka://host:9092[,host:9092].
    #[arg(long, value_name = "URL")]
    from: String,

    /// The topic (Kafka) or subject (NATS) the relay publishes order events to.
    #[arg(long, default_value = "order-events")]
    topic: String,

    /// The inbox consumer name, the Kafka consumer group and the NATS durable consumer.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,

    /// NATS: the stream (default: the one whose subjects capture --topic).
    #[arg(long)]
    stream: Option<String>,

    /// NATS: how long the server waits for an ack before redelivering (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ack_wait: Duration,

    /// Kafka: a librdkafka consumer property KEY=VALUE (repeatable), e.g.
    /// session.timeout.ms=10000.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    kafka_properties: Vec<String>,

    /// Log level or filter (RUST_LOG syntax).
    #[arg(long, env = "SHIPPING_SERVICE_LOG", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // The broker clients' reconnect chatter stays below info unless asked for by name.
    let filter = format!("async_nats=warn,rdkafka=warn,{}", args.log_level);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A line that cannot be written is dropped, not reported by a panicking `eprintln!`.
        .log_internal_errors(false)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shipping-service: {e}");
            ExitCode::from(if matches!(e, Error::Config(_)) { 2 } else { 1 })
        }
    }
}

enum Source {
    Nats(NatsSource),
    Kafka(KafkaSource),
}

async fn run(args: Args) -> Result<(), Error> {
    let crash = Crash::from_env().map_err(Error::Config)?;
    let source = source(&args)?;
    let shipments = Shipments::connect(&args.database_url, &args.name)
        .await
        .map_err(|e| match e {
            Error::Database(db) => Error::Config(format!("cannot open the database: {db}")),
            other => other,
        })?;
    shipments.create_tables().await?;
    let shutdown = shutdown_token();
    match source {
        Source::Nats(s) => s.run(&shipments, &crash, &shutdown).await?,
        Source::Kafka(s) => s.run(&shipments, &crash, &shutdown).await?,
    }
    tracing::info!("stopped");
    Ok(())
}

fn source(args: &Args) -> Result<Source, Error> {
    if args.from.starts_with("nats://") || args.from.starts_with("tls://") {
        Ok(Source::Nats(NatsSource {
            url: args.from.clone(),
            subject: args.topic.clone(),
            stream: args.stream.clone(),
            durable: args.name.clone(),
            ack_wait: args.ack_wait,
        }))
    } else if let Some(brokers) = args.from.strip_prefix("kafka://") {
        let properties = args
            .kafka_properties
            .iter()
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| Error::Config(format!("--kafka-property {p:?}: use KEY=VALUE")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Source::Kafka(KafkaSource {
            brokers: brokers.trim_end_matches('/').to_string(),
            topic: args.topic.clone(),
            group: args.name.clone(),
            properties,
        }))
    } else {
        let scheme = args.from.split_once(':').map_or("", |(s, _)| s);
        Err(Error::Config(format!(
            "--from must be nats://host:4222 or kafka://host:9092 (got scheme {scheme:?})"
        )))
    }
}

/// Cancelled on the first SIGINT/SIGTERM (the message in hand is finished); a second one exits
/// at once (an unacknowledged message is redelivered, the inbox knows whether it was applied).
fn shutdown_token() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            tracing::error!("cannot install the SIGTERM handler");
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!(
            "shutting down: finishing the message in hand (signal again to exit at once)"
        );
        token.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
    });
    shutdown
}
