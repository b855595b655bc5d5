//! Redis alone: what one pub/sub hop costs without wshub, as the floor of the cross-node
//! latency. A thread publishes stamped 64-byte messages (the clients' payload) at a fixed
//! rate with the `redis` crate's synchronous API, one `PUBLISH` at a time; another reads
//! them from a subscribed connection, as a broker's subscribing thread does. Both threads
//! are placed where the nodes' threads are.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::clients;
use crate::sys::{self, Clock};
use crate::wire::{self, Payload};

const CHANNEL: &str = "floor";

/// The latency of `rate * duration` messages through the Redis at `url`.
pub fn run(
    url: &str,
    rate: f64,
    duration: Duration,
    cpu: Option<usize>,
    clock: Clock,
) -> Result<Histogram<u64>, String> {
    let client = redis::Client::open(url).map_err(|e| format!("Redis floor: {e}"))?;
    let total = (rate * duration.as_secs_f64()) as u32;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let subscriber = {
        let client = client.clone();
        std::thread::Builder::new()
            .name("floor-sub".into())
            .spawn(move || -> Result<Histogram<u64>, String> {
                if let Some(cpu) = cpu {
                    sys::pin_self_to_cpu(cpu).map_err(|e| e.to_string())?;
                }
                let fail = |e: redis::RedisError| format!("Redis floor subscriber: {e}");
                let mut conn = client.get_connection().map_err(fail)?;
                let mut pubsub = conn.as_pubsub();
                pubsub.subscribe(CHANNEL).map_err(fail)?;
                pubsub
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .map_err(fail)?;
                let _ = ready_tx.send(());
                let mut latency = clients::histogram();
                let mut next = 0;
                let deadline = Instant::now() + duration + Duration::from_secs(10);
                while next < total {
                    if Instant::now() > deadline {
                        return Err(format!("Redis floor: {next} of {total} messages came"));
                    }
                    let msg = match pubsub.get_message() {
                        Ok(msg) => msg,
                        Err(e) if e.is_timeout() => continue,
                        Err(e) => return Err(fail(e)),
                    };
                    let now = clock.now_ns();
                    let p = wire::decode_payload(msg.get_payload_bytes())
                        .ok_or("Redis floor: not a payload")?;
                    if p.seq != next {
                        return Err(format!("Redis floor: seq {} for {next}", p.seq));
                    }
                    next += 1;
                    latency.saturating_record(now.saturating_sub(p.sent_ns).max(1));
                }
                Ok(latency)
            })
            .map_err(|e| format!("Redis floor: {e}"))?
    };
    let publisher = std::thread::Builder::new()
        .name("floor-pub".into())
        .spawn(move || -> Result<(), String> {
            if let Some(cpu) = cpu {
                sys::pin_self_to_cpu(cpu).map_err(|e| e.to_string())?;
            }
            let fail = |e: redis::RedisError| format!("Redis floor publisher: {e}");
            let mut conn = client.get_connection().map_err(fail)?;
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| "Redis floor: the subscriber did not start")?;
            let start = Instant::now();
            for seq in 0..total {
                let due = start + Duration::from_secs_f64(f64::from(seq) / rate);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let payload = wire::encode_payload(Payload {
                    sender: 0,
                    seq,
                    sent_ns: clock.now_ns(),
                });
                redis::cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(&payload[..])
                    .exec(&mut conn)
                    .map_err(fail)?;
            }
            Ok(())
        })
        .map_err(|e| format!("Redis floor: {e}"))?;
    let published = publisher
        .join()
        .map_err(|_| "Redis floor: the publisher panicked".to_string())?;
    let latency = subscriber
        .join()
        .map_err(|_| "Redis floor: the subscriber panicked".to_string())?;
    published?;
    latency
}
