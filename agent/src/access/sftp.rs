//! The sftp subsystem over the real filesystem (OpenSSH 9's `scp` speaks SFTP too).
//!
//! Served by a child process (`agent sftp-server`) running with the session user's rights, so
//! that file access is checked by the kernel against the right user. File data is read and
//! written with positioned system calls directly on the runtime thread: the child serves one
//! client, and a thread-pool hop per 32 KiB request would cost more than the I/O itself.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use thiserror::Error;
use tokio::fs;

/// Most bytes returned by one read request.
const MAX_READ: u32 = 256 * 1024;
/// Most open handles per session, so a client cannot exhaust the agent's descriptors.
const MAX_HANDLES: usize = 256;
/// Directory entries returned per `readdir` answer.
const READDIR_BATCH: usize = 128;

/// Why the sftp server stopped.
#[derive(Debug, Error)]
pub enum SftpError {
    /// Reading or writing stdin/stdout failed.
    #[error("sftp: {0}")]
    Io(#[from] std::io::Error),
}

/// What an open handle refers to.
enum Open {
    File { file: std::fs::File },
    Dir { entries: Option<Vec<File>> },
}

/// The sftp handler of one session.
pub struct SftpSession {
    /// Where relative paths start.
    home: PathBuf,
    /// Open handles by their wire name.
    handles: HashMap<String, Open>,
    /// Source of handle names.
    next_handle: u64,
}

impl SftpSession {
    /// A session whose relative paths start at `home`.
    pub fn new(home: PathBuf) -> Self {
        Self {
            home,
            handles: HashMap::new(),
            next_handle: 1,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        if p.is_empty() || p == "." {
            self.home.clone()
        } else if p.starts_with('/') {
            PathBuf::from(p)
        } else {
            self.home.join(p)
        }
    }

    fn add(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(reply(StatusCode::Failure, "too many open handles"));
        }
        let name = self.next_handle.to_string();
        self.next_handle += 1;
        self.handles.insert(name.clone(), open);
        Ok(name)
    }
}

fn reply(code: StatusCode, message: &str) -> StatusReply {
    StatusReply {
        status_code: code,
        error_message: Some(message.to_string()),
        language_tag: None,
    }
}

fn io_reply(e: std::io::Error) -> StatusReply {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    reply(code, &e.to_string())
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

fn no_handle() -> StatusReply {
    reply(StatusCode::Failure, "no such handle")
}

/// Applies size, permissions and times from `attrs` to `path`.
async fn apply_attrs(path: &Path, attrs: &FileAttributes) -> Result<(), StatusReply> {
    if let Some(size) = attrs.size {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .await
            .map_err(io_reply)?;
        f.set_len(size).await.map_err(io_reply)?;
    }
    if let Some(mode) = attrs.permissions {
        fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
            .await
            .map_err(io_reply)?;
    }
    if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
        let to_spec = |secs: u32| nix::sys::time::TimeSpec::new(i64::from(secs), 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &to_spec(atime),
            &to_spec(mtime),
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .map_err(|e| io_reply(e.into()))?;
    }
    Ok(())
}

impl russh_sftp::server::Handler for SftpSession {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        reply(StatusCode::OpUnsupported, "operation not supported")
    }

    async fn init(
        &mut self,
        _version: u32,
        _ext: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.path(&filename);
        let mut opts = std::fs::OpenOptions::new();
        opts.read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE));
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
            opts.mode(attrs.permissions.map(|m| m & 0o7777).unwrap_or(0o644));
        }
        let file = opts.open(&path).map_err(io_reply)?;
        let handle = self.add(Open::File { file })?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::File { .. }) => Ok(ok(id)),
            Some(Open::Dir { .. }) => Ok(ok(id)),
            None => Err(no_handle()),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let Some(Open::File { file }) = self.handles.get(&handle) else {
            return Err(no_handle());
        };
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let mut filled = 0;
        // Fill as much as asked: clients treat a short read as a hint, but fewer round trips
        // make large downloads faster.
        while filled < data.len() {
            let n = file
                .read_at(&mut data[filled..], offset + filled as u64)
                .map_err(io_reply)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 && !data.is_empty() {
            return Err(reply(StatusCode::Eof, "end of file"));
        }
        data.truncate(filled);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let Some(Open::File { file }) = self.handles.get(&handle) else {
            return Err(no_handle());
        };
        file.write_all_at(&data, offset).map_err(io_reply)?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = fs::symlink_metadata(self.path(&path))
            .await
            .map_err(io_reply)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = fs::metadata(self.path(&path)).await.map_err(io_reply)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let Some(Open::File { file, .. }) = self.handles.get(&handle) else {
            return Err(no_handle());
        };
        let meta = file.metadata().map_err(io_reply)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&meta),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        apply_attrs(&self.path(&path), &attrs).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let Some(Open::File { file }) = self.handles.get(&handle) else {
            return Err(no_handle());
        };
        if let Some(size) = attrs.size {
            file.set_len(size).map_err(io_reply)?;
        }
        if let Some(mode) = attrs.permissions {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(io_reply)?;
        }
        // Times go through the descriptor, so a rename in between cannot misdirect them.
        if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
            let to_spec = |secs: u32| nix::sys::time::TimeSpec::new(i64::from(secs), 0);
            nix::sys::stat::futimens(file, &to_spec(atime), &to_spec(mtime))
                .map_err(|e| io_reply(e.into()))?;
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let dir = self.path(&path);
        let mut read = fs::read_dir(&dir).await.map_err(io_reply)?;
        let mut entries = Vec::new();
        for name in [".", ".."] {
            if let Ok(meta) = fs::metadata(dir.join(name)).await {
                entries.push(File::new(name, FileAttributes::from(&meta)));
            }
        }
        while let Some(entry) = read.next_entry().await.map_err(io_reply)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let attrs = match fs::symlink_metadata(entry.path()).await {
                Ok(meta) => FileAttributes::from(&meta),
                Err(_) => FileAttributes::default(),
            };
            entries.push(File::new(name, attrs));
        }
        let handle = self.add(Open::Dir {
            entries: Some(entries),
        })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir { entries }) = self.handles.get_mut(&handle) else {
            return Err(no_handle());
        };
        match entries {
            Some(list) if !list.is_empty() => {
                let take = list.len().min(READDIR_BATCH);
                let files: Vec<File> = list.drain(..take).collect();
                Ok(Name { id, files })
            }
            _ => {
                *entries = None;
                Err(reply(StatusCode::Eof, "end of directory"))
            }
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        fs::remove_file(self.path(&filename))
            .await
            .map_err(io_reply)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(
            &mut builder,
            attrs.permissions.map(|m| m & 0o7777).unwrap_or(0o755),
        );
        builder.create(self.path(&path)).map_err(io_reply)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        fs::remove_dir(self.path(&path)).await.map_err(io_reply)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let full = self.path(&path);
        // Like OpenSSH, resolve what exists and keep a missing last component as given.
        let resolved = match fs::canonicalize(&full).await {
            Ok(p) => p,
            Err(_) => match (full.parent(), full.file_name()) {
                (Some(parent), Some(name)) => {
                    fs::canonicalize(parent).await.map_err(io_reply)?.join(name)
                }
                _ => full.clone(),
            },
        };
        let name = resolved.to_string_lossy().into_owned();
        Ok(Name {
            id,
            files: vec![File::dummy(name)],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let to = self.path(&newpath);
        // SFTP v3 rename must not overwrite (OpenSSH's posix-rename extension does).
        if fs::symlink_metadata(&to).await.is_ok() {
            return Err(reply(StatusCode::Failure, "target exists"));
        }
        fs::rename(self.path(&oldpath), to)
            .await
            .map_err(io_reply)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = fs::read_link(self.path(&path)).await.map_err(io_reply)?;
        Ok(Name {
            id,
            files: vec![File::dummy(target.to_string_lossy().into_owned())],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        fs::symlink(targetpath, self.path(&linkpath))
            .await
            .map_err(io_reply)?;
        Ok(ok(id))
    }
}

/// Serves SFTP on `stream` until the client closes it.
pub async fn serve<S>(stream: S, home: PathBuf)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    russh_sftp::server::run(stream, SftpSession::new(home)).await;
}

/// Read buffer of the child's stdin: a 4-byte length and a 32 KiB write request come in one
/// pipe read instead of two.
const STDIN_BUFFER: usize = 64 * 1024;

/// Serves SFTP on this process's stdin and stdout (the `agent sftp-server` child).
pub async fn serve_stdio(home: PathBuf) -> Result<(), SftpError> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    match stdio_pipes() {
        // The embedded server starts the child with pipes: read and write them without
        // blocking, on the runtime thread. tokio's stdin and stdout hand every read and write
        // to a blocking thread, which cost more CPU than the sftp work itself.
        Some((stdin, stdout)) => {
            let stream = StdioStream {
                stdin: tokio::io::BufReader::with_capacity(STDIN_BUFFER, stdin),
                stdout,
                _done: done_tx,
            };
            serve(stream, home).await;
        }
        // Started by hand on a terminal or a file.
        None => {
            let stream = StdioStream {
                stdin: tokio::io::stdin(),
                stdout: tokio::io::stdout(),
                _done: done_tx,
            };
            serve(stream, home).await;
        }
    }
    // russh-sftp serves in a task of its own; it drops the stream when the client is gone.
    let _ = done_rx.await;
    Ok(())
}

/// stdin and stdout as non-blocking pipes, when both are pipes.
fn stdio_pipes() -> Option<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Sender,
)> {
    use nix::sys::stat::SFlag;
    use std::os::fd::AsFd;
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    let is_pipe = |fd: &std::os::fd::OwnedFd| {
        nix::sys::stat::fstat(fd)
            .map(|st| {
                SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFIFO
            })
            .unwrap_or(false)
    };
    if !is_pipe(&stdin) || !is_pipe(&stdout) {
        return None;
    }
    // Both are checked first, so a failure here leaves neither descriptor non-blocking.
    let stdin = tokio::net::unix::pipe::Receiver::from_owned_fd(stdin).ok()?;
    let stdout = tokio::net::unix::pipe::Sender::from_owned_fd(stdout).ok()?;
    Some((stdin, stdout))
}

/// stdin and stdout as one stream; dropping it tells `serve_stdio` the session is over.
struct StdioStream<R, W> {
    stdin: R,
    stdout: W,
    _done: tokio::sync::oneshot::Sender<()>,
}

impl<R: tokio::io::AsyncRead + Unpin, W: Unpin> tokio::io::AsyncRead for StdioStream<R, W> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stdin).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StdioStream<R, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stdout).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stdout).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stdout).poll_shutdown(cx)
    }
}
