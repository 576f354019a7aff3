//! The command line's arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::output::Format;
use crate::{cert, load_files, node, run, simulate};

pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:50051";

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a SQL-fronted MPP analytics engine"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How a coordinator lets clients in, and what files they may touch.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ClientArgs {
    /// Let anyone who reaches the port in, without signing in (for a
    /// try on one machine; `--demo` on loopback implies it).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Seconds a sign-in's bearer token stays good.
    #[arg(long, default_value_t = 43200.0)]
    pub(crate) token_ttl: f64,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) files: FileArgs,
}

impl ClientArgs {
    /// Who may call, the TLS served (`members`: a process that calls the
    /// other members over TLS too) and the files clients may touch.
    pub(crate) fn resolve(
        &self,
        demo: bool,
        listen: &SocketAddr,
        members: bool,
    ) -> Result<
        (
            tessera_coordinator::Access,
            Option<tessera_worker::tls::NodeTls>,
            tessera_coordinator::FileDirs,
        ),
        String,
    > {
        let access = node::access(self.insecure, demo, listen, self.token_ttl)?;
        let tls = node::server_tls(self.tls.files(), members)?;
        Ok((access, tls, self.files.dirs(demo)?))
    }
}

/// A server's TLS.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct TlsArgs {
    /// Serve TLS with this certificate (PEM; `tessera cert create-node`).
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The CA that signed the members' certificates: the other members are
    /// checked against it and present theirs (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    pub(crate) fn files(&self) -> Option<tessera_worker::tls::TlsFiles> {
        Some(tessera_worker::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone(),
        })
    }
}

/// Where clients may read and write files on the server's machine.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct FileArgs {
    /// Clients (admins) may read files under DIR with CREATE EXTERNAL
    /// TABLE ... LOCATION (repeatable; none by default outside --demo).
    #[arg(long = "import-dir", value_name = "DIR")]
    pub(crate) import_dirs: Vec<PathBuf>,
    /// Clients (admins) may write files under DIR with COPY ... TO
    /// (repeatable; none by default outside --demo).
    #[arg(long = "export-dir", value_name = "DIR")]
    pub(crate) export_dirs: Vec<PathBuf>,
}

impl FileArgs {
    /// The directories; with `--demo` and none given, the current one.
    pub(crate) fn dirs(&self, demo: bool) -> Result<tessera_coordinator::FileDirs, String> {
        let (mut import, mut export) = (self.import_dirs.clone(), self.export_dirs.clone());
        if demo && import.is_empty() && export.is_empty() {
            let here = std::env::current_dir().map_err(|e| e.to_string())?;
            eprintln!(
                "--demo: clients may read and write files under {} (give --import-dir and \
                 --export-dir to choose)",
                here.display()
            );
            import.push(here.clone());
            export.push(here);
        }
        tessera_coordinator::FileDirs::new(&import, &export).map_err(|e| e.to_string())
    }
}

/// Where a client connects, and as whom.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ConnectArgs {
    /// HOST:PORT, or a URL (http://, https://, grpc://, grpc+tls://).
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub(crate) connect: String,
    /// Sign in as this user (password from TESSERA_PASSWORD, or asked).
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// Connect with TLS, checking the server's certificate against this CA
    /// (PEM; `tessera cert create-ca`).
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run a coordinator (Flight SQL) with N embedded workers on loopback.
    Serve {
        /// Address of the coordinator's Flight SQL service.
        #[arg(long, default_value = DEFAULT_ADDR)]
        listen: SocketAddr,
        /// Number of workers, each a gRPC server on its own port.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Where catalog and partitions live [default: $XDG_DATA_HOME/tessera or ~/.local/share/tessera].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Create and load the demo tables (skipped if they exist).
        #[arg(long)]
        demo: bool,
        /// Seconds a call to a worker may take before the statement fails
        /// naming the worker (a bulk write gets one more second per 8 MiB).
        #[arg(long, default_value_t = 30.0)]
        worker_timeout: f64,
        /// Seconds without a heartbeat after which a worker is down.
        #[arg(long, default_value_t = 5.0)]
        worker_lease: f64,
        #[command(flatten)]
        clients: ClientArgs,
    },
    /// Run a coordinator of a cluster across machines: Flight SQL for
    /// clients, membership for the workers that join it.
    Coordinator {
        /// Address to listen on (clients and workers).
        #[arg(long, default_value = DEFAULT_ADDR)]
        listen: SocketAddr,
        /// HOST:PORT clients and workers reach it at, if not --listen.
        #[arg(long)]
        advertise: Option<String>,
        /// Where the file metastore lives (without --metastore) [default: $XDG_DATA_HOME/tessera or ~/.local/share/tessera].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Keep catalog, partition map and membership in etcd:
        /// etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE].
        #[arg(long)]
        metastore: Option<String>,
        /// Seconds without a heartbeat after which a worker is down.
        #[arg(long, default_value_t = 5.0)]
        worker_lease: f64,
        /// Seconds a call to a worker may take before the statement fails.
        #[arg(long, default_value_t = 30.0)]
        worker_timeout: f64,
        /// File holding the secret every member of the cluster presents.
        #[arg(long)]
        cluster_secret_file: Option<PathBuf>,
        /// With etcd: seconds a dead leader holds the lead before a
        /// standby coordinator takes over.
        #[arg(long, default_value_t = 5.0)]
        leader_lease: f64,
        #[command(flatten)]
        clients: ClientArgs,
    },
    /// Run a worker: it holds partitions in --data-dir and joins a coordinator.
    Worker {
        /// Coordinator address(es) to join: HOST:PORT[,HOST:PORT...].
        #[arg(long, value_delimiter = ',', required = true)]
        join: Vec<String>,
        /// Address to listen on (port 0: any free port).
        #[arg(long)]
        listen: SocketAddr,
        /// HOST:PORT the coordinator and other workers reach it at, if not --listen.
        #[arg(long)]
        advertise: Option<String>,
        /// Where its partitions and its id live.
        #[arg(long)]
        data_dir: PathBuf,
        /// File holding the secret every member of the cluster presents.
        #[arg(long)]
        cluster_secret_file: Option<PathBuf>,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Make TLS certificates: a CA, and certificates it signs for the
    /// processes of a cluster and for clients.
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    /// Interactive SQL shell.
    Shell {
        #[command(flatten)]
        to: ConnectArgs,
        /// Run these statements, print the results and exit.
        #[arg(short = 'c')]
        command: Option<String>,
    },
    /// Generate a dataset and load it into a running cluster (or write Parquet).
    #[command(args_conflicts_with_subcommands = true)]
    Load {
        #[command(subcommand)]
        dataset: Option<Dataset>,
        /// Files on this machine to load: CSV, Parquet or JSON lines (by
        /// their extension, or --format), all into --table as one write.
        files: Vec<PathBuf>,
        /// The table to load into.
        #[arg(long)]
        table: Option<String>,
        /// Make the table, with the first file's columns (it must not exist).
        #[arg(long)]
        create: bool,
        /// With --create: how the new table is partitioned, e.g.
        /// 'HASH (id) PARTITIONS 8' [default: one partition].
        #[arg(long, requires = "create")]
        partition_by: Option<String>,
        #[arg(long, value_enum)]
        format: Option<load_files::FileFormat>,
        /// CSV: the field delimiter.
        #[arg(long, default_value_t = ',')]
        delimiter: char,
        /// CSV: the first line is data, not column names.
        #[arg(long)]
        no_header: bool,
        #[command(flatten)]
        to: ConnectArgs,
    },
    /// Benchmarks against single-process engines on the same data.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
    /// Run the statements of a SQL file in order (`-` reads stdin).
    Run {
        #[command(flatten)]
        to: ConnectArgs,
        /// Run every statement even after one fails (the exit status is
        /// still non-zero, with a summary of the failed ones).
        #[arg(long)]
        continue_on_error: bool,
        /// A variable the script uses as :NAME or ${NAME} (repeatable).
        #[arg(short = 'v', long = "var", value_name = "NAME=VALUE", value_parser = run::parse_var)]
        vars: Vec<(String, String)>,
        /// Print each statement before its result.
        #[arg(long)]
        echo: bool,
        /// Write each statement's result to DIR/001.<format>, 002... instead
        /// of stdout (needed for --format arrow with several statements).
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        file: PathBuf,
    },
    /// Replay the placement strategies on a key stream, no cluster: rows
    /// moved against the optimum, skew, partitions per worker and the
    /// fan-out of range scans and point reads while workers join one by
    /// one and then leave.
    Simulate(simulate::SimulateArgs),
}

#[derive(Subcommand)]
pub(crate) enum Dataset {
    /// TPC-H, generated in process: the 8 tables, hash-partitioned by key.
    Tpch {
        /// Scale factor (1 = about 1 GB of data, 6M lineitem rows).
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        #[command(flatten)]
        to: ConnectArgs,
        /// Hash partitions per table (nation and region have one).
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        /// Write `<table>.parquet` files into this directory instead of loading.
        #[arg(long)]
        parquet: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// TPC-H: Tessera (own cluster) against single-process DataFusion on Parquet.
    Tpch {
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Hash partitions per table.
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        /// Runs per query and engine; the median is reported.
        #[arg(long, default_value_t = 3)]
        iterations: usize,
        /// Keep the Parquet files here (reused when present) for other engines.
        #[arg(long)]
        parquet: Option<PathBuf>,
    },
    /// Secondary indexes: none, LOCAL, GLOBAL SYNC and GLOBAL ASYNC side by
    /// side (insert throughput and latency, partitions per insert and per
    /// lookup, lookup latency, ASYNC lag).
    Index {
        /// Rows in each table before the index is created (backfilled).
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Hash partitions per table (and per GLOBAL index).
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Single-row INSERTs timed per kind.
        #[arg(long, default_value_t = 300)]
        inserts: usize,
        /// Point lookups timed per kind.
        #[arg(long, default_value_t = 300)]
        lookups: usize,
        /// Clients inserting at once in the throughput round.
        #[arg(long, default_value_t = 4)]
        writers: usize,
    },
}
