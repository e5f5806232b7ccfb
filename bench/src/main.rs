//! `conveyor-bench`: Conveyor's benchmarks. Each prints a table and writes
//! `bench/results/<name>.json` with the machine it ran on and a ratio against a baseline
//! measured in the same run. Run them through `scripts/bench.sh`.

mod daemon;
mod fixed_rate;
mod hello;
mod ingest;
mod keys;
mod ordered;
mod processing;
mod raw_produce;
mod report;
mod soak;
mod summary;
mod webhooks;
mod wrk;

use clap::{Parser, Subcommand};

// The daemon's allocator: the in-process benchmark (`keys`) runs the runtime as the daemon
// does, and the baselines get the same allocator as what they are compared with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "conveyor-bench", about = "Conveyor benchmarks (see scripts/bench.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// POST /events throughput of the daemon against a bare hyper server, both under wrk, the
    /// p99 at half the maximum rate, and (Kafka) a raw acks=all producer.
    Ingest(ingest::IngestArgs),
    /// Events/s from a pre-filled Kafka topic to PostgreSQL rows, against a raw consumer.
    Processing(processing::ProcessingArgs),
    /// Key-level concurrency inside one partition (in-process, embedded log).
    Keys(keys::KeysArgs),
    /// Signed webhook deliveries/s against a raw hyper client, and with one endpoint dead.
    Webhooks(webhooks::WebhooksArgs),
    /// Per-key FIFO webhook delivery: K = 1, 10, 100, 1000 keys against min(K / the sink's
    /// round trip, the unordered rate).
    Ordered(ordered::OrderedArgs),
    /// Millions of events through the embedded daemon with small retention: memory, open
    /// files, disk and row counts sampled, their slope per million events reported.
    Soak(soak::SoakArgs),
    /// One table of every ratio in bench/results/*.json (their "summary" arrays), also
    /// written to bench/results/summary.md.
    Summary(summary::SummaryArgs),
    /// The ingest baseline server: answers 202 with a small JSON body to any request.
    HelloServer {
        /// 0 picks a free port; the address is printed on stdout.
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Ingest(args) => ingest::run(args).await,
        Cmd::Processing(args) => processing::run(args).await,
        Cmd::Keys(args) => keys::run(args).await,
        Cmd::Webhooks(args) => webhooks::run(args).await,
        Cmd::Ordered(args) => ordered::run(args).await,
        Cmd::Soak(args) => soak::run(args).await,
        Cmd::Summary(args) => summary::run(args),
        Cmd::HelloServer { port } => hello::serve(port).await,
    }
}
