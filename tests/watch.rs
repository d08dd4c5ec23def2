//! `blobcheck watch` against real servers with binary logs: faults injected
//! at random moments under churn are each reported exactly, and nothing
//! else is (not the churn's changes in flight, not the data set's
//! pre-existing faults, which no change touches).

mod churn_support;
mod common;
mod watch_support;

use std::sync::Arc;
use std::time::Duration;

use churn_support::{Dataset, WriterOptions, Writers, blocking, writer_seed};
use watch_support::{
    FAULT_BASE, Faults, HIGH_FAULT_BASE, RunningWatch, bare, logged_pair, watch_options,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_fault_is_reported_exactly_under_churn() {
    let (global, shard) = blocking(|| logged_pair("wchurn")).await;
    let data = Arc::new(Dataset::generate("wchurn", 21, 20_000, 40, 300, false));
    {
        let d = Arc::clone(&data);
        let (g, s) = (global.root_url(), shard.root_url());
        drop((g, s));
        let global_sql = d.global_sql();
        let shard_sql = d.shard_sql();
        let (global, shard) = blocking(move || {
            global.run_sql(&global_sql).unwrap();
            shard.run_sql(&shard_sql).unwrap();
            (global, shard)
        })
        .await;
        run(global, shard, data).await;
    }
}

async fn run(
    global: blobcheck::sandbox::Sandbox,
    shard: blobcheck::sandbox::Sandbox,
    data: Arc<Dataset>,
) {
    let config = data.config(&global.root_url(), &shard.root_url());
    let watch = RunningWatch::start(&config, |stop| {
        watch_options(Duration::from_millis(1_000), 2, stop)
    })
    .await;

    let writers = Writers::start(
        Arc::new(data.app()),
        &global.root_url(),
        &shard.root_url(),
        WriterOptions::default(),
    )
    .await;
    let seed = writer_seed();
    let mut faults = Faults::new(
        &global.root_url(),
        &shard.root_url(),
        &data.global_db,
        &data.shard_db,
        FAULT_BASE,
    );
    faults
        .inject_randomly(12, Duration::from_millis(800), seed)
        .await;
    let mut high = Faults::new(
        &global.root_url(),
        &shard.root_url(),
        &data.global_db,
        &data.shard_db,
        HIGH_FAULT_BASE,
    );
    high.inject_randomly(6, Duration::from_millis(500), seed ^ 1)
        .await;
    // Churn goes on while the last faults are judged.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let churn = writers.stop().await;
    println!("churn: {churn}");

    let mut expected = faults.expected.clone();
    expected.extend(high.expected.clone());
    watch.wait_for(&expected, Duration::from_secs(40)).await;
    // Anything false would have had the time to show too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (found, summary) = watch.stop().await;
    println!("{summary:?}");
    assert_eq!(
        bare(&found),
        bare(&expected),
        "the watch must report exactly the injected faults (seed {seed})"
    );
    faults.close().await;
    high.close().await;
}
