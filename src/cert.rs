//! `tessera cert`: a CA of one's own, and the certificates it signs for
//! the processes of a cluster (`node`: server and client of the others)
//! and for clients, in the layout `--tls-cert/--tls-key/--tls-ca` read.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

#[derive(Subcommand)]
pub enum CertCommand {
    /// Make a CA: <certs-dir>/ca.crt and its key (keep the key safe: whoever
    /// holds it can make certificates the cluster trusts).
    #[command(name = "create-ca")]
    Ca {
        #[command(flatten)]
        dirs: CertDirs,
        /// Days the CA is good for.
        #[arg(long, default_value_t = 3650)]
        lifetime_days: i64,
    },
    /// Make <certs-dir>/node.crt and node.key for a coordinator or worker,
    /// good for the given host names and IP addresses, signed by the CA.
    #[command(name = "create-node")]
    Node {
        /// Every name and address clients and the other members reach the
        /// process at (e.g. 127.0.0.1 localhost db1.example.com).
        #[arg(required = true)]
        hosts: Vec<String>,
        #[command(flatten)]
        dirs: CertDirs,
        /// Days the certificate is good for.
        #[arg(long, default_value_t = 365)]
        lifetime_days: i64,
    },
    /// Make <certs-dir>/client.<user>.crt and .key: a client certificate
    /// for USER, signed by the CA.
    #[command(name = "create-client")]
    Client {
        user: String,
        #[command(flatten)]
        dirs: CertDirs,
        /// Days the certificate is good for.
        #[arg(long, default_value_t = 365)]
        lifetime_days: i64,
    },
}

#[derive(clap::Args)]
pub struct CertDirs {
    /// Where certificates are written (and ca.crt is read).
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
    /// The CA's private key [default: <certs-dir>/ca.key].
    #[arg(long)]
    ca_key: Option<PathBuf>,
    /// Replace files that exist.
    #[arg(long)]
    overwrite: bool,
}

impl CertDirs {
    fn ca_key(&self) -> PathBuf {
        self.ca_key
            .clone()
            .unwrap_or_else(|| self.certs_dir.join("ca.key"))
    }

    fn ca_cert(&self) -> PathBuf {
        self.certs_dir.join("ca.crt")
    }
}

pub fn run(command: CertCommand) -> Result<(), String> {
    match command {
        CertCommand::Ca {
            dirs,
            lifetime_days,
        } => create_ca(&dirs, lifetime_days),
        CertCommand::Node {
            hosts,
            dirs,
            lifetime_days,
        } => {
            let params = leaf(
                hosts.clone(),
                &hosts[0],
                &[
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
                lifetime_days,
            )?;
            sign(&dirs, params, "node")
        }
        CertCommand::Client {
            user,
            dirs,
            lifetime_days,
        } => {
            if user.is_empty() || user.contains(['/', '\\']) {
                return Err(format!("'{user}' is not a user name"));
            }
            let params = leaf(
                vec![],
                &user,
                &[ExtendedKeyUsagePurpose::ClientAuth],
                lifetime_days,
            )?;
            sign(&dirs, params, &format!("client.{user}"))
        }
    }
}

fn validity(params: &mut CertificateParams, days: i64) -> Result<(), String> {
    if days <= 0 {
        return Err(format!("--lifetime-days {days}: give a positive number"));
    }
    let now = OffsetDateTime::now_utc();
    // An hour's slack for clocks a little behind this one.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    Ok(())
}

/// A certificate's subject: organization Tessera, and `common_name`.
fn subject(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Tessera");
    name.push(DnType::CommonName, common_name);
    name
}

fn leaf(
    sans: Vec<String>,
    common_name: &str,
    usages: &[ExtendedKeyUsagePurpose],
    days: i64,
) -> Result<CertificateParams, String> {
    let mut params =
        CertificateParams::new(sans).map_err(|e| format!("bad host name or address: {e}"))?;
    params.distinguished_name = subject(common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    Ok(params)
}

fn create_ca(dirs: &CertDirs, days: i64) -> Result<(), String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject("Tessera CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days)?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    let (cert_path, key_path) = (dirs.ca_cert(), dirs.ca_key());
    save(dirs, &cert_path, &cert, &key_path, &key)?;
    println!("CA certificate: {}", cert_path.display());
    println!("CA key:         {}  (keep it safe)", key_path.display());
    Ok(())
}

fn sign(dirs: &CertDirs, params: CertificateParams, name: &str) -> Result<(), String> {
    let (ca_cert, ca_key) = (dirs.ca_cert(), dirs.ca_key());
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            format!(
                "cannot read {}: {e}; make a CA first with `tessera cert create-ca --certs-dir {}`",
                p.display(),
                dirs.certs_dir.display()
            )
        })
    };
    let ca_key_pair = KeyPair::from_pem(&read(&ca_key)?)
        .map_err(|e| format!("{} is not a private key: {e}", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_cert)?, ca_key_pair)
        .map_err(|e| format!("{} is not a CA certificate: {e}", ca_cert.display()))?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    let cert_path = dirs.certs_dir.join(format!("{name}.crt"));
    let key_path = dirs.certs_dir.join(format!("{name}.key"));
    save(dirs, &cert_path, &cert, &key_path, &key)?;
    println!("Certificate: {}", cert_path.display());
    println!("Key:         {}", key_path.display());
    Ok(())
}

/// Writes a certificate and its key (readable by its owner only), unless
/// either file exists and `--overwrite` was not given.
fn save(
    dirs: &CertDirs,
    cert_path: &Path,
    cert: &rcgen::Certificate,
    key_path: &Path,
    key: &KeyPair,
) -> Result<(), String> {
    if !dirs.overwrite
        && let Some(p) = [cert_path, key_path].iter().find(|p| p.exists())
    {
        return Err(format!(
            "{} exists; remove it or give --overwrite",
            p.display()
        ));
    }
    write(key_path, &key.serialize_pem(), true)?;
    write(cert_path, &cert.pem(), false)
}

/// Writes `text` to `path`; a key readable by its owner only.
fn write(path: &Path, text: &str, private: bool) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
