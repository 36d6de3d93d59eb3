//! The local control socket through which `agent app …` commands reach the supervisor inside
//! `agent run`: one JSON request line, one JSON answer line.
//!
//! The socket is created with mode 0600 in the state directory: whoever may use it may run
//! programs as the agent's application user, so only the agent's own user (normally root) can.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::apps::supervisor::{DeployRequest, Supervisor};

/// Largest request accepted (a recipe is at most 1 MiB).
const MAX_REQUEST: u64 = 2 * 1024 * 1024;

/// A request to the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Deploy a recipe.
    Deploy {
        /// Recipe text.
        recipe: String,
        /// Its path, for messages.
        origin: PathBuf,
        /// Directory of artifacts named by bare file name.
        artifacts: Option<PathBuf>,
        /// Configuration assignments.
        set: Vec<String>,
    },
    /// All components.
    List,
    /// One component.
    Show {
        /// Its name.
        name: String,
    },
    /// Start a component.
    Start {
        /// Its name.
        name: String,
    },
    /// Stop a component.
    Stop {
        /// Its name.
        name: String,
    },
    /// Restart a component.
    Restart {
        /// Its name.
        name: String,
    },
    /// Remove a component.
    Remove {
        /// Its name.
        name: String,
    },
}

/// The answer: a result or an error message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result (JSON), on success.
    #[serde(default)]
    pub result: serde_json::Value,
    /// What went wrong, on failure.
    #[serde(default)]
    pub error: Option<String>,
}

/// Path of the control socket.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Serves the control socket until the agent stops.
pub async fn serve(path: PathBuf, supervisor: Supervisor) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let supervisor = supervisor.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, supervisor).await {
                tracing::debug!("control client: {e}");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, supervisor: Supervisor) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd.take(MAX_REQUEST));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let answer = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request, &supervisor).await,
        Err(e) => failure(format!("bad request: {e}")),
    };
    let mut text = serde_json::to_string(&answer).map_err(std::io::Error::other)?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await
}

fn failure(message: String) -> Answer {
    Answer {
        ok: false,
        result: serde_json::Value::Null,
        error: Some(message),
    }
}

fn success<T: Serialize>(value: T) -> Answer {
    match serde_json::to_value(value) {
        Ok(result) => Answer {
            ok: true,
            result,
            error: None,
        },
        Err(e) => failure(e.to_string()),
    }
}

async fn handle(request: Request, sup: &Supervisor) -> Answer {
    let outcome = match request {
        Request::Deploy {
            recipe,
            origin,
            artifacts,
            set,
        } => sup
            .deploy(DeployRequest {
                recipe,
                origin,
                artifacts_dir: artifacts,
                set,
                overrides: None,
                relay_cache: None,
            })
            .await
            .map(success),
        Request::List => Ok(success(sup.list().await)),
        Request::Show { name } => sup.show(&name).await.map(success),
        Request::Start { name } => sup.start(&name).await.map(success),
        Request::Stop { name } => sup.stop(&name).await.map(success),
        Request::Restart { name } => sup.restart(&name).await.map(success),
        Request::Remove { name } => sup.remove(&name).await.map(|()| success(())),
    };
    outcome.unwrap_or_else(|e| failure(e.to_string()))
}

/// Why a control request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The agent is not running (or not as this user).
    #[error(
        "cannot reach the agent at {path}: {source} (is `agent run` running, and are you its user?)"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not understood.
    #[error("control socket: bad answer: {0}")]
    Answer(#[from] serde_json::Error),
}

/// Sends one request to the running agent and waits for its answer (deployments can take as
/// long as their install steps, so the wait is long).
pub async fn request(state_dir: &Path, request: &Request) -> Result<Answer, ControlError> {
    let path = path(state_dir);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.clone(),
            source,
        })?;
    let (rd, mut wr) = stream.into_split();
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await?;
    let mut reader = BufReader::new(rd);
    let mut line = String::new();
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(Duration::from_secs(3600), read).await {
        Ok(r) => {
            r?;
        }
        Err(_) => {
            return Err(ControlError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within an hour",
            )));
        }
    }
    Ok(serde_json::from_str(&line)?)
}
