//! The agent's Prometheus metrics and its health probes, served on `--metrics-addr`:
//! - `GET /metrics`: OpenMetrics text (Prometheus scrapes it as is).
//! - `GET /healthz`: 200 while the agent's loop has ticked within [`LIVENESS_WINDOW`].
//! - `GET /readyz`: 200 once a reconcile has programmed the datapath.
//!
//! Packet counts are read from the kernel's per-CPU counters at scrape time, for the endpoints
//! the agent last published; only non-zero counters are exposed, so the series stay bounded by
//! the endpoints of the node (at most `MAX_ENDPOINTS`) times directions and outcomes.

use std::{
    convert::Infallible,
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use policy_common::verdict::Direction;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use crate::{datapath::CounterReader, policy::state::PodRef};

/// How long the loop may go without a tick before `/healthz` fails. The loop ticks every
/// second; a reconcile of a large cluster can hold it for a few.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(30);

/// The port the DaemonSet's probes and scrape annotations use.
pub const DEFAULT_PORT: u16 = 9402;

/// Connections served at once; more wait to be accepted. Prometheus and the kubelet's probes
/// need a handful.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers before the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection is kept, whatever it does (a keep-alive scraper reconnects).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Entries and capacity of one map that can fill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

/// What the agent last published for the scrape-time collector.
#[derive(Debug, Default)]
struct Published {
    endpoints: Vec<(u32, PodRef)>,
    maps: Vec<MapFill>,
}

/// Reads the kernel's counters and the published map fill at scrape time.
#[derive(Debug)]
struct DatapathCollector {
    counters: CounterReader,
    published: Arc<RwLock<Published>>,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let Ok(published) = self.published.read() else {
            return Ok(());
        };
        let mut packets = encoder.encode_descriptor(
            "netpol_packets",
            "Packets the programs decided, by endpoint, direction (seen from the pod) and outcome",
            None,
            MetricType::Counter,
        )?;
        for (endpoint_id, pod) in &published.endpoints {
            let readings = match self.counters.endpoint_counters(*endpoint_id) {
                Ok(readings) => readings,
                Err(error) => {
                    debug!(%pod, %error, "cannot read counters");
                    continue;
                }
            };
            for reading in readings {
                let (verdict, reason) = match reading.outcome {
                    Ok(verdict) => ("allowed", verdict.name()),
                    Err(reason) => ("dropped", reason.name()),
                };
                let labels = [
                    ("namespace", pod.namespace.as_str()),
                    ("pod", pod.name.as_str()),
                    ("direction", direction_name(reading.direction)),
                    ("verdict", verdict),
                    ("reason", reason),
                ];
                ConstCounter::new(reading.packets).encode(packets.encode_family(&labels)?)?;
            }
        }
        let mut entries = encoder.encode_descriptor(
            "netpol_map_entries",
            "Entries the agent keeps in each map that can fill",
            None,
            MetricType::Gauge,
        )?;
        for fill in &published.maps {
            let gauge = ConstGauge::new(i64::try_from(fill.entries).unwrap_or(i64::MAX));
            gauge.encode(entries.encode_family(&[("map", fill.map.as_str())])?)?;
        }
        let mut capacity = encoder.encode_descriptor(
            "netpol_map_capacity",
            "Capacity of each map that can fill",
            None,
            MetricType::Gauge,
        )?;
        for fill in &published.maps {
            let gauge = ConstGauge::new(i64::try_from(fill.capacity).unwrap_or(i64::MAX));
            gauge.encode(capacity.encode_family(&[("map", fill.map.as_str())])?)?;
        }
        Ok(())
    }
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The agent's metrics. Cheap to update; encoded on scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconcile_seconds: Histogram,
    enforcement_seconds: Histogram,
    failures: Family<Vec<(String, String)>, Counter>,
    published: Arc<RwLock<Published>>,
}

impl Metrics {
    /// The metrics, reading packet counters through `counters`.
    pub fn new(counters: CounterReader) -> Metrics {
        let mut registry = Registry::default();
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "netpol_reconcile_duration_seconds",
            "Time of each reconcile that ran (resolve, discovery, map writes, attach)",
            reconcile_seconds.clone(),
        );
        let enforcement_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "netpol_change_to_enforcement_seconds",
            "From the agent receiving a change of its source to the end of the reconcile that \
             programmed it",
            enforcement_seconds.clone(),
        );
        let failures = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "netpol_failures",
            "Failures that started (map full, attach, invalid object, ...), by kind; a failure \
             that persists counts once",
            failures.clone(),
        );
        let published = Arc::new(RwLock::new(Published::default()));
        registry.register_collector(Box::new(DatapathCollector {
            counters,
            published: Arc::clone(&published),
        }));
        Metrics {
            registry,
            reconcile_seconds,
            enforcement_seconds,
            failures,
            published,
        }
    }

    pub fn observe_reconcile(&self, elapsed: Duration) {
        self.reconcile_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn observe_enforcement(&self, elapsed: Duration) {
        self.enforcement_seconds.observe(elapsed.as_secs_f64());
    }

    /// Exposes the failure counter of `kind` from zero, so rates work from the first failure.
    pub fn declare_failure_kind(&self, kind: &str) {
        drop(
            self.failures
                .get_or_create(&vec![("kind".to_owned(), kind.to_owned())]),
        );
    }

    /// Counts a failure that started.
    pub fn failure_started(&self, kind: &str) {
        self.failures
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .inc();
    }

    /// The endpoints (by id) whose counters scrapes report, and the maps' fill.
    pub fn publish(&self, endpoints: Vec<(u32, PodRef)>, maps: Vec<MapFill>) {
        if let Ok(mut published) = self.published.write() {
            *published = Published { endpoints, maps };
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Whether the loop is alive and the datapath programmed.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    last_tick_ms: AtomicU64,
    ready: AtomicBool,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            started: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        }
    }
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The loop is alive now.
    pub fn tick(&self) {
        self.last_tick_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A reconcile has programmed the datapath.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_live(&self) -> bool {
        let since_tick = self
            .now_ms()
            .saturating_sub(self.last_tick_ms.load(Ordering::Relaxed));
        Duration::from_millis(since_tick) <= LIVENESS_WINDOW
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    // A client holding connections open (or never finishing its headers) takes slots for
    // HEADER_TIMEOUT at most; the others wait in the listen backlog, never in memory.
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let response = respond(&request, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => debug!(%error, "metrics connection ended"),
                Err(_) => debug!("metrics connection closed after its lifetime"),
            }
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => match metrics.encode() {
            Ok(body) => {
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode metrics\n".to_owned(),
            ),
        },
        "/healthz" if health.is_live() => text(StatusCode::OK, "ok\n".to_owned()),
        "/healthz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent's loop has not ticked recently\n".to_owned(),
        ),
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ready\n".to_owned()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the datapath is not programmed yet\n".to_owned(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_live_after_a_tick_and_ready_only_when_set() {
        let health = Health::default();
        health.tick();
        assert!(health.is_live());
        assert!(!health.is_ready());
        health.set_ready();
        assert!(health.is_ready());
        let stale = Health {
            started: Instant::now() - LIVENESS_WINDOW - Duration::from_secs(1),
            last_tick_ms: AtomicU64::new(0),
            ready: AtomicBool::new(true),
        };
        assert!(!stale.is_live());
    }
}
