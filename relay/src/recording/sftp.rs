//! Watches an SFTP conversation passing through the relay and notes the file operations in
//! it (uploads, downloads, removals, renames, directories made and removed), for the session
//! record. It reads both directions of the subsystem's byte stream but never changes or
//! holds them up; anything it cannot make sense of stops the watching, not the transfer.
//!
//! Packets are `u32 length, u8 type, u32 request id, …` (draft-ietf-secsh-filexfer-02, the
//! version OpenSSH speaks). Bulk data (`WRITE` and `DATA`) is counted, not kept: only the first
//! `HEAD` bytes of a packet are buffered.

use std::collections::HashMap;

use serde::Serialize;

/// Bytes of a packet kept for parsing; enough for every field before a `WRITE`'s data.
const HEAD: usize = 4096;
/// Largest packet OpenSSH sends or accepts (256 KiB), with room for framing.
const MAX_PACKET: usize = 256 * 1024 + 1024;
/// Most file operations noted per session; a script touching more files is summarised.
pub const MAX_OPS: usize = 10_000;
/// Most open handles and outstanding requests tracked at once.
const MAX_TRACKED: usize = 4096;

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;

/// `pflags` bit: opened for writing.
const FXF_WRITE: u32 = 0x02;

/// One file operation of a session.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileOp {
    /// `upload`, `download`, `open` (opened, nothing moved), `remove`, `rename`, `mkdir`,
    /// `rmdir`.
    pub op: String,
    /// The path on the device.
    pub path: String,
    /// For `rename`: the new path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Bytes written (upload) or read (download).
    pub bytes: u64,
    /// Whether the device reported success (for operations answered with a status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
}

/// Reassembles packets of one direction.
#[derive(Debug, Default)]
struct Packets {
    /// Head of the packet being received (length field included).
    head: Vec<u8>,
    /// Bytes of the current packet still to come after `head` is full.
    skip: usize,
    /// Length of the current packet's body, once its length field is in.
    body_len: Option<usize>,
}

impl Packets {
    /// Feeds bytes; calls `packet(head, body_len)` for each complete packet, where `head` is the
    /// first (up to [`HEAD`]) bytes of its body. Returns false once the stream makes no sense.
    fn feed(&mut self, mut data: &[u8], packet: &mut dyn FnMut(&[u8], usize)) -> bool {
        while !data.is_empty() {
            let Some(body_len) = self.body_len else {
                let need = 4 - self.head.len();
                let take = need.min(data.len());
                self.head.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.head.len() == 4 {
                    let len = u32::from_be_bytes([
                        self.head[0],
                        self.head[1],
                        self.head[2],
                        self.head[3],
                    ]) as usize;
                    if len == 0 || len > MAX_PACKET {
                        return false;
                    }
                    self.head.clear();
                    self.body_len = Some(len);
                    self.skip = len.saturating_sub(HEAD);
                }
                continue;
            };
            let head_len = body_len.min(HEAD);
            if self.head.len() < head_len {
                let take = (head_len - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..take]);
                data = &data[take..];
            } else {
                let take = self.skip.min(data.len());
                self.skip -= take;
                data = &data[take..];
            }
            if self.head.len() == head_len && self.skip == 0 {
                packet(&self.head, body_len);
                self.head.clear();
                self.body_len = None;
            }
        }
        true
    }
}

/// A cursor over a packet's fields.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*b))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(s)
    }
    fn text(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).chars().take(4096).collect())
    }
}

/// An open file on the device.
#[derive(Debug)]
struct OpenFile {
    path: String,
    for_writing: bool,
    written: u64,
    read: u64,
}

/// A request waiting for its answer.
#[derive(Debug)]
enum Pending {
    Open { path: String, for_writing: bool },
    Read { handle: Vec<u8> },
    Op(FileOp),
}

/// The file operations of one SFTP session, built from both directions of its stream.
#[derive(Debug, Default)]
pub struct SftpObserver {
    to_device: Packets,
    from_device: Packets,
    pending: HashMap<u32, Pending>,
    open: HashMap<Vec<u8>, OpenFile>,
    ops: Vec<FileOp>,
    /// Operations beyond [`MAX_OPS`], counted.
    dropped: u64,
    /// Set when the stream stopped making sense; nothing more is noted.
    lost: bool,
}

impl SftpObserver {
    /// Bytes the engineer's client sent to the device's SFTP server.
    pub fn client_bytes(&mut self, data: &[u8]) {
        if self.lost {
            return;
        }
        let mut packets = Vec::new();
        let ok = self
            .to_device
            .feed(data, &mut |head, len| packets.push((head.to_vec(), len)));
        for (head, len) in packets {
            self.request(&head, len);
        }
        self.lost |= !ok;
    }

    /// Bytes the device's SFTP server sent back.
    pub fn server_bytes(&mut self, data: &[u8]) {
        if self.lost {
            return;
        }
        let mut packets = Vec::new();
        let ok = self
            .from_device
            .feed(data, &mut |head, len| packets.push((head.to_vec(), len)));
        for (head, len) in packets {
            self.response(&head, len);
        }
        self.lost |= !ok;
    }

    /// The operations noted, files still open at the end included.
    pub fn finish(mut self) -> (Vec<FileOp>, u64) {
        let open: Vec<OpenFile> = self.open.drain().map(|(_, f)| f).collect();
        for f in open {
            self.closed(f);
        }
        (self.ops, self.dropped)
    }

    fn note(&mut self, op: FileOp) {
        if self.ops.len() < MAX_OPS {
            self.ops.push(op);
        } else {
            self.dropped += 1;
        }
    }

    fn track(&mut self, id: u32, p: Pending) {
        if self.pending.len() < MAX_TRACKED {
            self.pending.insert(id, p);
        }
    }

    fn request(&mut self, head: &[u8], body_len: usize) {
        let mut f = Fields(head);
        let (Some(kind), Some(id)) = (f.u8(), f.u32()) else {
            return;
        };
        let op = |op: &str, path: String, to: Option<String>| {
            Pending::Op(FileOp {
                op: op.into(),
                path,
                to,
                bytes: 0,
                ok: None,
            })
        };
        match kind {
            FXP_OPEN => {
                if let (Some(path), Some(flags)) = (f.text(), f.u32()) {
                    let for_writing = flags & FXF_WRITE != 0;
                    self.track(id, Pending::Open { path, for_writing });
                }
            }
            FXP_READ => {
                if let Some(handle) = f.bytes() {
                    self.track(
                        id,
                        Pending::Read {
                            handle: handle.to_vec(),
                        },
                    );
                }
            }
            FXP_WRITE => {
                // The data's length field comes after the handle and the offset; a WRITE is
                // body_len minus its header whatever the head held.
                if let Some(handle) = f.bytes() {
                    let header = 1 + 4 + 4 + handle.len() + 8 + 4;
                    let n = body_len.saturating_sub(header) as u64;
                    if let Some(file) = self.open.get_mut(handle) {
                        file.written += n;
                    }
                }
            }
            FXP_CLOSE => {
                if let Some(handle) = f.bytes()
                    && let Some(file) = self.open.remove(handle)
                {
                    self.closed(file);
                }
            }
            FXP_REMOVE | FXP_MKDIR | FXP_RMDIR => {
                if let Some(path) = f.text() {
                    let name = match kind {
                        FXP_REMOVE => "remove",
                        FXP_MKDIR => "mkdir",
                        _ => "rmdir",
                    };
                    self.track(id, op(name, path, None));
                }
            }
            FXP_RENAME => {
                if let (Some(from), Some(to)) = (f.text(), f.text()) {
                    self.track(id, op("rename", from, Some(to)));
                }
            }
            _ => {}
        }
    }

    fn response(&mut self, head: &[u8], body_len: usize) {
        let mut f = Fields(head);
        let (Some(kind), Some(id)) = (f.u8(), f.u32()) else {
            return;
        };
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match (kind, pending) {
            (FXP_HANDLE, Pending::Open { path, for_writing }) => {
                if let Some(handle) = f.bytes()
                    && self.open.len() < MAX_TRACKED
                {
                    self.open.insert(
                        handle.to_vec(),
                        OpenFile {
                            path,
                            for_writing,
                            written: 0,
                            read: 0,
                        },
                    );
                }
            }
            (FXP_DATA, Pending::Read { handle }) => {
                let n = body_len.saturating_sub(1 + 4 + 4) as u64;
                if let Some(file) = self.open.get_mut(&handle) {
                    file.read += n;
                }
            }
            (FXP_STATUS, Pending::Op(mut op)) => {
                op.ok = f.u32().map(|code| code == 0);
                self.note(op);
            }
            _ => {}
        }
    }

    fn closed(&mut self, f: OpenFile) {
        let (op, bytes) = if f.written > 0 || (f.for_writing && f.read == 0) {
            ("upload", f.written)
        } else if f.read > 0 {
            ("download", f.read)
        } else {
            ("open", 0)
        };
        self.note(FileOp {
            op: op.into(),
            path: f.path,
            to: None,
            bytes,
            ok: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        p
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    #[test]
    fn uploads_downloads_and_renames_are_noted_across_any_chunking() {
        let data = vec![7u8; 10_000];
        let open_w = [
            &string(b"/tmp/up")[..],
            &0x1au32.to_be_bytes(),
            &0u32.to_be_bytes(),
        ];
        let open_r = [
            &string(b"/etc/hostname")[..],
            &1u32.to_be_bytes(),
            &0u32.to_be_bytes(),
        ];
        let write = [&string(b"h1")[..], &0u64.to_be_bytes(), &string(&data)];
        let read = [
            &string(b"h2")[..],
            &0u64.to_be_bytes(),
            &32768u32.to_be_bytes(),
        ];
        let rename = [&string(b"/tmp/up")[..], &string(b"/tmp/up2")];
        // (from the client?, packet), in the order they cross the wire.
        let exchange = [
            (true, packet(FXP_OPEN, 1, &open_w)),
            (false, packet(FXP_HANDLE, 1, &[&string(b"h1")])),
            (true, packet(FXP_WRITE, 2, &write)),
            (true, packet(FXP_CLOSE, 3, &[&string(b"h1")])),
            (true, packet(FXP_OPEN, 4, &open_r)),
            (false, packet(FXP_HANDLE, 4, &[&string(b"h2")])),
            (true, packet(FXP_READ, 5, &read)),
            (false, packet(FXP_DATA, 5, &[&string(b"board1\n")])),
            (true, packet(FXP_RENAME, 6, &rename)),
            (false, packet(FXP_STATUS, 6, &[&0u32.to_be_bytes()])),
        ];
        for chunk in [1usize, 3, 7, 4096, 100_000] {
            let mut o = SftpObserver::default();
            for (client, bytes) in &exchange {
                for c in bytes.chunks(chunk) {
                    if *client {
                        o.client_bytes(c);
                    } else {
                        o.server_bytes(c);
                    }
                }
            }
            let (ops, dropped) = o.finish();
            assert_eq!(dropped, 0);
            let summary: Vec<(String, String, u64)> = ops
                .iter()
                .map(|o| (o.op.clone(), o.path.clone(), o.bytes))
                .collect();
            assert!(
                summary.contains(&("upload".into(), "/tmp/up".into(), 10_000)),
                "{chunk}: {summary:?}"
            );
            assert!(
                summary.contains(&("download".into(), "/etc/hostname".into(), 7)),
                "{chunk}: {summary:?}"
            );
            assert!(ops.iter().any(|o| o.op == "rename"
                && o.to.as_deref() == Some("/tmp/up2")
                && o.ok == Some(true)));
        }
    }

    #[test]
    fn nonsense_stops_the_watching_without_panicking() {
        let mut o = SftpObserver::default();
        o.client_bytes(&[0xff; 64]);
        o.server_bytes(&[0, 0, 0, 1, 101]);
        let (ops, _) = o.finish();
        assert!(ops.is_empty());
    }
}
