//! Two daemons in one consumer group (Kafka only: the embedded log is single-process).

use std::time::Duration;

use crate::devices::{await_final_state, send_sequenced};
use crate::harness::{Daemon, Opts, eventually, metric_sum, real_only, token};

#[tokio::test]
async fn real_two_daemons_split_partitions_and_one_takes_over() {
    real_only("real_two_daemons_split_partitions_and_one_takes_over");
    let mut a = Daemon::start(Opts::new()).await;
    let mut opts_b = Opts::new();
    opts_b.names = a.names.clone();
    let b = Daemon::start(opts_b).await;
    let split = eventually(Duration::from_secs(60), || async {
        let (pa, pb) = (a.partitions().await, b.partitions().await);
        !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 4 && pa.iter().all(|p| !pb.contains(p))
    })
    .await;
    assert!(split, "partitions never split: a={:?} b={:?}", a.partitions().await, b.partitions().await);

    let t = token("gw", &["device", "user"]);
    let first = send_sequenced(&a, &t, "grp", 100, 10, 0).await;
    assert!(await_final_state(&b, &t, &first, Duration::from_secs(90)).await.is_empty());

    // More events, then stop `a` while they are processed: `b` takes over everything.
    let second = send_sequenced(&b, &t, "grp", 100, 10, 10).await;
    assert_eq!(a.terminate(Duration::from_secs(30)).await.code(), Some(0));
    let took_over = eventually(Duration::from_secs(60), || async { b.partitions().await.len() == 4 }).await;
    assert!(took_over, "b must own all partitions after a left: {:?}", b.partitions().await);
    let laggards = await_final_state(&b, &t, &second, Duration::from_secs(120)).await;
    assert!(laggards.is_empty(), "devices lost or reordered across the handover: {laggards:?}");
    let text = b.metrics().await;
    assert_eq!(metric_sum(&text, "conveyor_dlq_records_written_total", ""), 0.0);
}
