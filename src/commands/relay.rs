use outbox_relay::route::{Envelope, Template};
use outbox_relay::sink::{self, SinkOptions};
use outbox_relay::source::poll::PollOptions;
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::{Relay, RelayConfig, RetryPolicy, Router};

use crate::cli::{Cli, OnDeadLetter, OnPublish, RelayArgs, SourceKind};
use crate::config::FileConfig;
use crate::error::CliError;

/// Everything `outbox relay` needs, resolved from flags, environment, file and defaults.
pub struct Settings {
    pub sink_url: String,
    pub router: Router,
    pub config: RelayConfig,
    pub sink_options: SinkOptions,
}

/// The source from `--source`, `OUTBOX_SOURCE` or `relay.source`.
pub fn source_kind(args: &RelayArgs, file: &FileConfig) -> Result<SourceKind, CliError> {
    match (args.source, file.relay.source.as_deref()) {
        (Some(s), _) => Ok(s),
        (None, None | Some("poll")) => Ok(SourceKind::Poll),
        (None, Some("cdc")) => Ok(SourceKind::Cdc),
        (None, Some(other)) => Err(CliError::usage(format!(
            "config relay.source = {other:?}: use \"poll\" or \"cdc\""
        ))),
    }
}

pub fn settings(args: &RelayArgs, file: &FileConfig) -> Result<Settings, CliError> {
    source_kind(args, file)?;
    let sink_url = args
        .sink
        .clone()
        .or_else(|| file.relay.sink.clone())
        .ok_or_else(|| {
            CliError::usage(format!(
                "no sink: pass --sink URL or set OUTBOX_SINK ({})",
                sink::supported_schemes().join(", ")
            ))
        })?;

    let envelope_name = args
        .envelope
        .as_deref()
        .or(file.relay.envelope.as_deref())
        .unwrap_or("default");
    let mut envelope = Envelope::parse(envelope_name).map_err(CliError::usage)?;
    if let Some(source) = &file.relay.cloudevents_source {
        envelope = envelope.with_source(source);
    }
    let topic = args
        .topic
        .as_deref()
        .or(file.relay.topic.as_deref())
        .unwrap_or(envelope.default_topic());
    let mut router = Router::new(Template::parse(topic).map_err(CliError::usage)?, envelope);
    if let Some(key) = args.key.as_deref().or(file.relay.key.as_deref()) {
        let key = Template::parse(key).map_err(|e| CliError::usage(format!("--key: {e}")))?;
        router = router.with_key(key);
    }

    let on_dead_letter = match (args.on_dead_letter, file.relay.on_dead_letter.as_deref()) {
        (Some(m), _) => m,
        (None, None | Some("wait")) => OnDeadLetter::Wait,
        (None, Some("proceed")) => OnDeadLetter::Proceed,
        (None, Some(other)) => {
            return Err(CliError::usage(format!(
                "config relay.on_dead_letter = {other:?}: use \"wait\" or \"proceed\""
            )))
        }
    };
    let defaults = RelayConfig::default();
    let retry_defaults = RetryPolicy::default();
    let config = RelayConfig {
        poll: PollOptions {
            batch_size: args
                .batch_size
                .or(file.relay.batch_size)
                .unwrap_or(defaults.poll.batch_size),
            poll_interval: args
                .poll_interval
                .or(file.relay.poll_interval)
                .unwrap_or(defaults.poll.poll_interval),
            dead_letters_block: on_dead_letter == OnDeadLetter::Wait,
            delete_published: match args.on_publish.or(file.relay.on_publish) {
                Some(OnPublish::Delete) => true,
                Some(OnPublish::Mark) | None => false,
            },
        },
        workers: args
            .workers
            .or(file.relay.workers)
            .unwrap_or(defaults.workers),
        max_in_flight: file.relay.max_in_flight.unwrap_or(defaults.max_in_flight),
        retry: RetryPolicy {
            base: args
                .backoff_base
                .or(file.retry.base)
                .unwrap_or(retry_defaults.base),
            max: args
                .backoff_max
                .or(file.retry.max)
                .unwrap_or(retry_defaults.max),
            max_attempts: args
                .max_attempts
                .or(file.retry.max_attempts)
                .unwrap_or(retry_defaults.max_attempts),
            jitter: file.retry.jitter.unwrap_or(retry_defaults.jitter),
        },
    };
    config.validate()?;

    let sink_options = SinkOptions {
        #[cfg(feature = "nats")]
        nats: {
            let mut nats = file.nats.clone();
            if let Some(s) = &args.nats_stream {
                nats.stream = s.clone();
            }
            nats
        },
        #[cfg(feature = "kafka")]
        kafka: file.kafka.clone(),
        #[cfg(feature = "amqp")]
        amqp: file.amqp.clone(),
        #[cfg(feature = "redis")]
        redis: file.redis.clone(),
        #[cfg(feature = "mqtt")]
        mqtt: file.mqtt.clone(),
        #[cfg(feature = "http")]
        http: file.http.clone(),
    };
    Ok(Settings {
        sink_url,
        router,
        config,
        sink_options,
    })
}

pub async fn run(cli: &Cli, args: &RelayArgs, file: &FileConfig) -> Result<(), CliError> {
    if source_kind(args, file)? == SourceKind::Cdc {
        #[cfg(feature = "cdc")]
        return super::cdc::run(cli, args, file).await;
        #[cfg(not(feature = "cdc"))]
        return Err(CliError::usage(
            "this build has no CDC source (cargo feature cdc); use --source poll",
        ));
    }
    let settings = settings(args, file)?;
    let url = super::database_url(cli, file)?;
    let sink = sink::from_url(&settings.sink_url, &settings.sink_options).await?;
    let options = ConnectOptions {
        // One connection per worker for its claim, one for LISTEN, one spare.
        max_connections: settings.config.workers as u32 + 2,
        asynchronous_commit: true,
        ..ConnectOptions::default()
    };
    let store = Store::connect(&url, &options).await?;
    store.ensure_schema().await?;
    let relay = Relay::new(store, sink, settings.router, settings.config);
    relay.run(crate::signals::shutdown_token()).await?;
    let s = relay.stats().snapshot();
    tracing::info!(
        delivered = s.delivered,
        failed = s.failed,
        dead_lettered = s.dead_lettered,
        "relay finished"
    );
    Ok(())
}
