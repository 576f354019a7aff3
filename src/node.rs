//! `tessera coordinator` and `tessera worker`: the processes of a cluster
//! across machines. Workers join a coordinator, which keeps membership
//! (and, with `--metastore etcd://...`, the catalog in etcd).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_coordinator::{
    Access, Coordinator, CoordinatorServer, EtcdMetastore, FileDirs, Follower, TAKEOVER_GRACE,
    open_file_metastore,
};
use tessera_worker::membership::{MemberHello, Membership, read_id, unix_now_ms};
use tessera_worker::tls::{NodeTls, TlsFiles, member_url, set_member_tls};
use tessera_worker::{Storage, start_worker_with};

/// Sets the cluster secret from `--cluster-secret-file`; without one, the
/// cluster admits any process that reaches it, which is said loudly.
pub fn set_secret(file: Option<&std::path::Path>) -> Result<(), String> {
    match file {
        Some(f) => tessera_worker::secret::set_cluster_secret_file(f).map_err(|e| e.to_string()),
        None => {
            eprintln!(
                "Warning: no --cluster-secret-file: any process that reaches this one can join \
                 the cluster or send it work. Give every member the same secret file."
            );
            Ok(())
        }
    }
}

/// The TLS a server serves with, from `--tls-cert/--tls-key/--tls-ca`.
/// A member of a cluster across machines (`members`) calls the others
/// over TLS too, so it needs the CA that signed their certificates.
pub fn server_tls(files: Option<TlsFiles>, members: bool) -> Result<Option<NodeTls>, String> {
    let Some(files) = files else {
        return Ok(None);
    };
    if members && files.ca.is_none() {
        return Err(
            "--tls-cert needs --tls-ca here: the CA that signed the certificates of the other \
             coordinators and workers, which this process calls over TLS"
                .to_string(),
        );
    }
    let tls = NodeTls::load(&files).map_err(|e| e.to_string())?;
    if members {
        set_member_tls(tls.clone());
    }
    Ok(Some(tls))
}

/// How a coordinator lets clients in: signing in, unless `--insecure` (or
/// `--demo` on a loopback address), which is said when it starts.
pub fn access(
    insecure: bool,
    demo: bool,
    listen: &SocketAddr,
    token_ttl: f64,
) -> Result<Access, String> {
    if insecure || (demo && listen.ip().is_loopback()) {
        eprintln!(
            "Warning: {}: anyone who reaches {listen} may run anything, without signing in",
            if insecure {
                "--insecure"
            } else {
                "--demo on a loopback address implies --insecure"
            }
        );
        return Ok(Access::Insecure);
    }
    if !(token_ttl.is_finite() && token_ttl > 0.0) {
        return Err(format!(
            "--token-ttl {token_ttl}: give a positive number of seconds"
        ));
    }
    Ok(Access::SignIn {
        token_ttl: Duration::from_secs_f64(token_ttl),
    })
}

/// The first admin's password, from TESSERA_PASSWORD.
pub fn given_password() -> Option<String> {
    std::env::var("TESSERA_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
}

/// Says how to sign in as the first admin.
pub fn tell_first_admin(access: Access, generated: Option<&str>) {
    if matches!(access, Access::Insecure) {
        return;
    }
    match generated {
        Some(password) => eprintln!(
            "Created the first user, admin (role admin), with password {password}\n  (shown \
             this once: sign in with `tessera shell --user admin`; change it with ALTER USER \
             admin PASSWORD '...')"
        ),
        None if given_password().is_some() => {
            eprintln!("Users: sign in as admin with the password in TESSERA_PASSWORD")
        }
        None => eprintln!("Users: sign in as a user of this cluster (SHOW USERS lists them)"),
    }
}

/// Makes the first admin of a cluster that has no users: user `admin`,
/// with the password in TESSERA_PASSWORD, or a generated one shown once.
pub async fn first_admin(coordinator: &Coordinator, access: Access) -> Result<(), String> {
    if matches!(access, Access::Insecure) {
        return Ok(());
    }
    let generated = coordinator
        .ensure_admin(given_password().as_deref())
        .await
        .map_err(|e| e.to_string())?;
    tell_first_admin(access, generated.as_deref());
    Ok(())
}

pub struct CoordinatorArgs {
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub metastore: Option<String>,
    pub lease: Duration,
    /// How long a dead leader holds the lead before a standby takes over.
    pub leader_lease: Duration,
    pub access: Access,
    pub tls: Option<NodeTls>,
    pub files: FileDirs,
}

pub async fn coordinator(args: CoordinatorArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    match args.metastore.as_deref() {
        Some(url) if url.starts_with("etcd://") => {
            let store = EtcdMetastore::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            with_etcd(&args, url, store).await
        }
        Some(other) => Err(format!(
            "--metastore {other}: only etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE] is known; \
             leave it out for the file metastore in --data-dir"
        )),
        None => {
            let metastore = open_file_metastore(&args.data_dir)
                .await
                .map_err(|e| e.to_string())?;
            let coordinator = Coordinator::open(metastore, Default::default(), args.lease)
                .await
                .map_err(|e| e.to_string())?;
            coordinator.set_file_dirs(args.files.clone());
            first_admin(&coordinator, args.access).await?;
            let server = CoordinatorServer::start_with(
                Arc::new(coordinator),
                args.listen,
                args.access,
                args.tls.as_ref(),
            )
            .await
            .map_err(|e| e.to_string())?;
            let metastore = format!("files in {}", args.data_dir.display());
            greet(&args, &server, &metastore);
            crate::wait_for_signal().await;
            eprintln!("Stopping...");
            server.stop().await;
            Ok(())
        }
    }
}

fn greet(args: &CoordinatorArgs, server: &CoordinatorServer, metastore: &str) {
    let reach = args
        .advertise
        .clone()
        .unwrap_or_else(|| server.addr.to_string());
    eprintln!(
        "Tessera coordinator on {} (Flight SQL and membership), metastore: {metastore}",
        server.addr
    );
    if args.tls.is_some() {
        eprintln!(
            "Workers join with: tessera worker --join {reach} --listen HOST:PORT --data-dir DIR \
             --tls-cert node.crt --tls-key node.key --tls-ca ca.crt"
        );
        eprintln!(
            "Connect with: tessera shell --connect grpc+tls://{reach} --tls-ca ca.crt   (Ctrl-C \
             stops)"
        );
    } else {
        eprintln!(
            "Workers join with: tessera worker --join {reach} --listen HOST:PORT --data-dir DIR"
        );
        eprintln!("Connect with: tessera shell --connect {reach}   (Ctrl-C stops)");
    }
}

/// Every coordinator on one etcd serves clients; one leads. This one
/// serves as a follower of the leader at once, campaigns for the lead in
/// the background, and serves as the leader from when it wins.
async fn with_etcd(args: &CoordinatorArgs, url: &str, store: EtcdMetastore) -> Result<(), String> {
    if args.advertise.is_none() && args.listen.ip().is_unspecified() {
        return Err(format!(
            "--listen {} is every address; say which one the other coordinators and the \
             workers reach this one at with --advertise HOST:PORT",
            args.listen
        ));
    }
    let me = args
        .advertise
        .clone()
        .unwrap_or_else(|| args.listen.to_string());
    let follower = Follower::new(store.clone(), &me);
    let following = Coordinator::open_follower(follower, args.lease)
        .await
        .map_err(|e| e.to_string())?;
    following.set_file_dirs(args.files.clone());
    let server = Arc::new(
        CoordinatorServer::start_with(
            Arc::new(following),
            args.listen,
            args.access,
            args.tls.as_ref(),
        )
        .await
        .map_err(|e| e.to_string())?,
    );
    greet(args, &server, url);
    let campaign = {
        let server = Arc::clone(&server);
        let store = store.clone();
        let lease = args.lease;
        let leader_lease = args.leader_lease;
        let access = args.access;
        let files = args.files.clone();
        tokio::spawn(async move {
            let led = store
                .lead(
                    &me,
                    leader_lease,
                    |other| {
                        eprintln!(
                            "Following coordinator {other}, which leads this cluster: serving \
                             queries here, passing writes and DDL to it; taking over the lead \
                             when it stops"
                        )
                    },
                    || {
                        eprintln!(
                            "Error: this coordinator lost the lead of the cluster (its etcd lease \
                             ended); stopping so that the new leader alone writes"
                        );
                        std::process::exit(3);
                    },
                )
                .await;
            if let Err(e) = led {
                eprintln!("Error: campaigning for the lead failed: {e}");
                std::process::exit(3);
            }
            match Coordinator::open(Box::new(store), Default::default(), lease).await {
                Ok(leading) => {
                    leading.set_file_dirs(files);
                    // Queries this coordinator runs as a follower keep
                    // reading at their snapshots: pinned here now.
                    let running = server.coordinator();
                    if let Some(follower) = running.follower() {
                        for pin in follower.open_pins() {
                            match leading.catalog().pin_xmin(pin.xmin()) {
                                Ok(local) => pin.hold(Box::new(local)),
                                Err(e) => eprintln!("Warning: a running query's snapshot: {e}"),
                            }
                        }
                    }
                    leading.catalog().hold_compaction(TAKEOVER_GRACE);
                    if let Err(e) = first_admin(&leading, access).await {
                        eprintln!("Warning: the first admin could not be made: {e}");
                    }
                    server.replace(Arc::new(leading));
                    eprintln!("Leading the cluster");
                }
                Err(e) => {
                    eprintln!("Error: cannot take over the lead: {e}");
                    std::process::exit(3);
                }
            }
        })
    };
    crate::wait_for_signal().await;
    eprintln!("Stopping...");
    campaign.abort();
    let _ = campaign.await;
    match Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(server) => server.coordinator().close(),
    }
    // A follower takes over now rather than when the lease ends.
    store.resign().await;
    Ok(())
}

pub struct WorkerArgs {
    pub join: Vec<String>,
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub tls: Option<NodeTls>,
}

pub async fn worker(args: WorkerArgs) -> Result<(), String> {
    let storage = Storage::open(&args.data_dir).map_err(|e| e.to_string())?;
    let id = read_id(&args.data_dir).map_err(|e| e.to_string())?;
    let label = id.clone().unwrap_or_else(|| "(joining)".to_string());
    let handle = start_worker_with(&label, args.listen, storage, args.tls.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let url = match &args.advertise {
        Some(a) => member_url(a),
        None if args.listen.ip().is_unspecified() => {
            handle.stop().await;
            return Err(format!(
                "--listen {} is every address; say which one the others reach this worker at \
                 with --advertise HOST:PORT",
                args.listen
            ));
        }
        None => handle.url.clone(),
    };
    let coordinators: Vec<String> = args.join.iter().map(|c| member_url(c)).collect();
    let mut member = Membership {
        coordinators: coordinators.clone(),
        dir: args.data_dir.clone(),
        hello: MemberHello {
            id,
            url: url.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: unix_now_ms(),
        },
    };
    eprintln!(
        "Tessera worker on {} (advertised as {url}), data dir {}, joining {}",
        handle.addr,
        args.data_dir.display(),
        coordinators.join(",")
    );
    // The first join is awaited here only to print the id; the worker
    // serves from the start and keeps trying if no coordinator answers.
    let first = match member.join().await {
        Ok(reply) => {
            eprintln!("Joined as {}", reply.id);
            Some(reply)
        }
        Err(e) => {
            eprintln!("Not joined yet ({e}); retrying in the background");
            None
        }
    };
    let beats = tokio::spawn(member.run(first));
    crate::wait_for_signal().await;
    eprintln!("Stopping...");
    beats.abort();
    handle.stop().await;
    Ok(())
}
