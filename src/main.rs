//! `tessera`: the command line. `serve` runs a coordinator with embedded
//! workers; `shell` and `run` are Flight SQL clients.

mod bench;
mod bench_index;
mod cert;
mod cli;
mod client;
mod load_files;
mod node;
mod output;
mod run;
mod shell;
mod simulate;
mod tpch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tessera_coordinator::{Cluster, ClusterConfig};

pub(crate) use crate::cli::ConnectArgs;
use crate::cli::{BenchCommand, Cli, Command, Dataset};
use crate::client::Client;

/// A positive number of seconds from the command line.
fn seconds(flag: &str, value: f64) -> Result<std::time::Duration, String> {
    if !(value.is_finite() && value > 0.0) {
        return Err(format!(
            "{flag} {value} is not a positive number of seconds"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("tessera");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/tessera"),
        None => PathBuf::from("tessera-data"),
    }
}

async fn serve(config: ClusterConfig, demo: bool) -> Result<(), String> {
    let (scheme, ca) = if config.tls.is_some() {
        ("grpc+tls", " --tls-ca ca.crt")
    } else {
        ("grpc", "")
    };
    let (data_dir, access) = (config.data_dir.clone(), config.access);
    let cluster = Cluster::start(config).await.map_err(|e| e.to_string())?;
    node::tell_first_admin(access, cluster.generated_password.as_deref());
    eprintln!(
        "Tessera coordinator on {} (Flight SQL), {} workers: {}",
        cluster.addr,
        cluster.workers.len(),
        cluster
            .workers
            .iter()
            .map(|w| format!("{}={}", w.id, w.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("Data dir: {}", data_dir.display());
    if demo {
        load_demo(&cluster).await?;
    }
    eprintln!(
        "Connect with: tessera shell --connect {scheme}://{}{ca}   (Ctrl-C stops)",
        cluster.addr
    );
    wait_for_signal().await;
    eprintln!("Stopping...");
    cluster.stop().await;
    Ok(())
}

async fn load_demo(cluster: &Cluster) -> Result<(), String> {
    let tables = tessera_datasets::demo_tables().map_err(|e| e.to_string())?;
    let coordinator = cluster.coordinator();
    for t in tables {
        if coordinator
            .catalog()
            .table_def(t.name)
            .map_err(|e| e.to_string())?
            .is_some()
        {
            eprintln!("demo: {} exists, not loading it again", t.name);
            continue;
        }
        coordinator.run(t.ddl).await.map_err(|e| e.to_string())?;
        let rows: usize = t.batches.iter().map(|b| b.num_rows()).sum();
        let bar = indicatif::ProgressBar::new(rows as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("demo: {msg:<14} [{bar:30}] {pos}/{len} rows")
                .map_err(|e| e.to_string())?
                .progress_chars("=> "),
        );
        bar.set_message(t.name);
        for batch in t.batches {
            let n = batch.num_rows() as u64;
            coordinator
                .load(t.name, t.schema.clone(), vec![batch])
                .await
                .map_err(|e| e.to_string())?;
            bar.inc(n);
        }
        bar.finish();
    }
    Ok(())
}

pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tessera_coordinator::runtime_builder().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                listen,
                workers,
                data_dir,
                demo,
                worker_timeout,
                worker_lease,
                clients,
            } => {
                tessera_worker::set_call_timeout(seconds("--worker-timeout", worker_timeout)?);
                let (access, tls, files) = clients.resolve(demo, &listen, false)?;
                let config = ClusterConfig {
                    listen,
                    workers,
                    data_dir: data_dir.unwrap_or_else(default_data_dir),
                    lease: seconds("--worker-lease", worker_lease)?,
                    access,
                    first_password: node::given_password(),
                    tls,
                    files,
                };
                serve(config, demo).await
            }
            Command::Coordinator {
                listen,
                advertise,
                data_dir,
                metastore,
                worker_lease,
                worker_timeout,
                cluster_secret_file,
                leader_lease,
                clients,
            } => {
                let (access, tls, files) = clients.resolve(false, &listen, true)?;
                if cluster_secret_file.is_none() && !clients.insecure {
                    return Err(
                        "signing in needs the cluster secret too (other coordinators \
                         and workers present it instead of a user): give --cluster-secret-file \
                         F, the same file on every coordinator and worker, or run with \
                         --insecure"
                            .to_string(),
                    );
                }
                node::set_secret(cluster_secret_file.as_deref())?;
                let lease = seconds("--worker-lease", worker_lease)?;
                let leader_lease = seconds("--leader-lease", leader_lease)?;
                tessera_worker::set_call_timeout(seconds("--worker-timeout", worker_timeout)?);
                node::coordinator(node::CoordinatorArgs {
                    listen,
                    advertise,
                    data_dir: data_dir.unwrap_or_else(default_data_dir),
                    metastore,
                    lease,
                    leader_lease,
                    access,
                    tls,
                    files,
                })
                .await
            }
            Command::Worker {
                join,
                listen,
                advertise,
                data_dir,
                cluster_secret_file,
                tls,
            } => {
                node::set_secret(cluster_secret_file.as_deref())?;
                let tls = node::server_tls(tls.files(), true)?;
                node::worker(node::WorkerArgs {
                    join,
                    listen,
                    advertise,
                    data_dir,
                    tls,
                })
                .await
            }
            Command::Cert { command } => cert::run(command),
            Command::Simulate(args) => simulate::run(args),
            Command::Shell { to, command } => {
                let mut client = Client::connect_as(&to).await?;
                match command {
                    Some(sql) => shell::run_statements(&mut client, &sql, false).await,
                    None => shell::interactive(client, &to.connect).await,
                }
            }
            Command::Run {
                to,
                continue_on_error,
                vars,
                echo,
                output_dir,
                format,
                file,
            } => {
                run::run(run::RunArgs {
                    to,
                    format,
                    file,
                    continue_on_error,
                    vars,
                    echo,
                    output_dir,
                })
                .await
            }
            Command::Bench {
                bench:
                    BenchCommand::Tpch {
                        sf,
                        workers,
                        partitions,
                        iterations,
                        parquet,
                    },
            } => {
                bench::run(bench::TpchBench {
                    sf,
                    workers,
                    partitions,
                    iterations,
                    parquet,
                })
                .await
            }
            Command::Bench {
                bench:
                    BenchCommand::Index {
                        rows,
                        partitions,
                        workers,
                        inserts,
                        lookups,
                        writers,
                    },
            } => {
                bench_index::run(bench_index::IndexBench {
                    rows,
                    partitions,
                    workers,
                    inserts,
                    lookups,
                    writers,
                })
                .await
            }
            Command::Load {
                dataset:
                    Some(Dataset::Tpch {
                        sf,
                        to,
                        partitions,
                        parquet,
                    }),
                ..
            } => match parquet {
                Some(dir) => tpch::write_parquet(sf, &dir),
                None => tpch::load(&to, sf, partitions).await,
            },
            Command::Load {
                dataset: None,
                files,
                table,
                create,
                partition_by,
                format,
                delimiter,
                no_header,
                to,
            } => {
                let Some(table) = table else {
                    return Err(
                        "give the table to load into: --table NAME (with --create to \
                                make it)"
                            .to_string(),
                    );
                };
                let delimiter = u8::try_from(delimiter)
                    .map_err(|_| format!("--delimiter '{delimiter}' is not one byte"))?;
                let mut client = Client::connect_as(&to).await?;
                load_files::load(
                    &mut client,
                    load_files::LoadFiles {
                        files,
                        table,
                        create,
                        partition_by,
                        format,
                        delimiter,
                        header: !no_header,
                    },
                )
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
