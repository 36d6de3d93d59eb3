//! A PostgreSQL server for the backend's tests: one per test process, started on first use by
//! `scripts/postgres-server` on a free loopback port (or the server named by
//! `TETHER_TEST_POSTGRES`, a URL), with a new database for every case.
//!
//! The script stops its server and deletes its directory when its standard input closes, which
//! happens when this process exits however it exits, so no test leaves a server behind.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The test process's server.
struct Server {
    /// Kept so that the script's standard input stays open while this process runs.
    _script: Option<Child>,
    /// URL of its `tether` database.
    url: String,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn start() -> Result<Server, String> {
    if let Ok(url) = std::env::var("TETHER_TEST_POSTGRES") {
        return Ok(Server { _script: None, url });
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("picking a free port: {e}"))?
        .port();
    let dir = tempfile::Builder::new()
        .prefix("tether-pg-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?
        .keep();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/postgres-server");
    let mut child = Command::new(script)
        .arg(dir.join("pg"))
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{script}: {e}"))?;
    let stdout = child.stdout.take().ok_or("the script has no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading {script}: {e}"))?;
        if let Some(url) = line.strip_prefix("ready ") {
            return Ok(Server {
                _script: Some(child),
                url: url.to_string(),
            });
        }
    }
    Err(format!(
        "{script} ended without starting PostgreSQL (is Debian's postgresql package installed?)"
    ))
}

/// A new, empty database on the test server.
pub(crate) struct Database {
    /// Its URL.
    pub url: String,
}

impl Database {
    /// Creates a database of its own for one test case.
    pub fn create() -> Result<Database, Box<dyn std::error::Error>> {
        let server = SERVER.get_or_init(start).as_ref().map_err(|e| e.clone())?;
        let name = format!(
            "case_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&server.url, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await?;
            drop(client);
            let _ = driver.await;
            Ok::<_, Box<dyn std::error::Error>>(())
        })?;
        let base = server
            .url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .ok_or("the server URL has no database")?;
        Ok(Database {
            url: format!("{base}/{name}?sslmode=disable"),
        })
    }
}
