//! asciicast v2: the recording format of engineers' terminal sessions, readable by every
//! asciinema player (<https://docs.asciinema.org/manual/asciicast/v2/>).
//!
//! A file is one JSON header line followed by one JSON array per event:
//! `[seconds_since_start, "o" | "i" | "r", data]`. Output and input data are text, so bytes
//! are decoded as a UTF-8 stream: a character split across two SSH packets is kept whole, and
//! bytes that are not UTF-8 become U+FFFD, as asciinema itself records them.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a cast file could not be read.
#[derive(Debug, Error)]
pub enum CastError {
    /// Reading failed.
    #[error("reading the recording: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not what asciicast v2 allows.
    #[error("line {line}: {message}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// The header line of a cast file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// Always 2.
    pub version: u32,
    /// Terminal columns at the start.
    pub width: u32,
    /// Terminal rows at the start.
    pub height: u32,
    /// Start time, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// A short description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Environment of the recorded terminal (`TERM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the start of the recording.
    pub time: f64,
    /// `o` output, `i` input, `r` resize (`COLSxROWS`), `m` marker.
    pub code: String,
    /// The event's data.
    pub data: String,
}

/// Turns a byte stream into text without splitting characters across chunks.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// The start of a character whose remaining bytes have not arrived yet (at most 3 bytes).
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Decodes `data` after whatever was pending; returns the complete characters.
    pub fn decode(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Whatever is left at the end of the stream, as replacement characters.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// How long buffered events may wait before they reach the file: a relay that is killed loses
/// at most this much of a session's end.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Writes one cast file.
pub struct CastWriter<W: Write> {
    out: std::io::BufWriter<W>,
    started: Instant,
    last_flush: Instant,
    output: Utf8Stream,
    input: Utf8Stream,
}

impl<W: Write> CastWriter<W> {
    /// Starts a recording with its header.
    pub fn new(out: W, header: &Header) -> std::io::Result<Self> {
        let mut out = std::io::BufWriter::new(out);
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        out.flush()?;
        let now = Instant::now();
        Ok(Self {
            out,
            started: now,
            last_flush: now,
            output: Utf8Stream::default(),
            input: Utf8Stream::default(),
        })
    }

    /// A header for a terminal of `width` x `height` starting now.
    pub fn header(width: u32, height: u32, term: &str, title: String) -> Header {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok();
        let env = (!term.is_empty())
            .then(|| std::iter::once(("TERM".to_string(), term.to_string())).collect());
        Header {
            version: 2,
            width,
            height,
            timestamp,
            title: Some(title),
            env,
        }
    }

    /// Records terminal output.
    pub fn output(&mut self, data: &[u8]) -> std::io::Result<()> {
        let text = self.output.decode(data);
        self.event("o", &text)
    }

    /// Records keyboard input.
    pub fn input(&mut self, data: &[u8]) -> std::io::Result<()> {
        let text = self.input.decode(data);
        self.event("i", &text)
    }

    /// Records a terminal resize.
    pub fn resize(&mut self, width: u32, height: u32) -> std::io::Result<()> {
        self.event("r", &format!("{width}x{height}"))?;
        self.flush()
    }

    /// Writes what is buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.last_flush = Instant::now();
        self.out.flush()
    }

    /// Ends the recording (the last partial characters included).
    pub fn finish(&mut self) -> std::io::Result<()> {
        let rest = self.output.finish();
        self.event("o", &rest)?;
        self.flush()
    }

    fn event(&mut self, code: &str, text: &str) -> std::io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let t = self.started.elapsed().as_secs_f64();
        write!(self.out, "[{t:.6}, \"{code}\", ")?;
        serde_json::to_writer(&mut self.out, text)?;
        self.out.write_all(b"]\n")?;
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }
}

/// Longest line a reader accepts: a recorded event is one SSH packet's data (at most 64 KiB,
/// up to 6 bytes each once escaped as JSON), so anything longer is not a recording of ours.
const MAX_LINE: usize = 1024 * 1024;

/// Reads a cast file: its header, then its events in order.
pub fn read(input: impl BufRead) -> Result<(Header, Vec<Event>), CastError> {
    let mut lines = input.split(b'\n');
    let malformed = |line: usize, message: String| CastError::Malformed { line, message };
    let first = lines
        .next()
        .ok_or_else(|| malformed(1, "empty file: no asciicast header".into()))??;
    let header: Header = serde_json::from_slice(&first)
        .map_err(|e| malformed(1, format!("not an asciicast header: {e}")))?;
    if header.version != 2 {
        return Err(malformed(
            1,
            format!("asciicast version {} (only 2 is read)", header.version),
        ));
    }
    let mut events = Vec::new();
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let line = line?;
        if line.len() > MAX_LINE {
            return Err(malformed(n, format!("line longer than {MAX_LINE} bytes")));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (time, code, data): (f64, String, String) = serde_json::from_slice(&line)
            .map_err(|e| malformed(n, format!("not an event [time, code, data]: {e}")))?;
        if !time.is_finite() || time < 0.0 {
            return Err(malformed(n, format!("event time {time} is not a time")));
        }
        events.push(Event { time, code, data });
    }
    Ok((header, events))
}

/// Replays output events to `out` in real time divided by `speed`, with pauses longer than
/// `max_pause` shortened to it (as `asciinema play -i`). A `speed` of infinity writes at once.
pub fn play(
    events: &[Event],
    out: &mut dyn Write,
    speed: f64,
    max_pause: Duration,
) -> std::io::Result<()> {
    let mut last = 0.0f64;
    for e in events.iter().filter(|e| e.code == "o") {
        let gap = ((e.time - last).max(0.0) / speed).min(max_pause.as_secs_f64());
        last = e.time;
        if gap > 0.0 && gap.is_finite() {
            out.flush()?;
            std::thread::sleep(Duration::from_secs_f64(gap));
        }
        out.write_all(e.data.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_stay_whole() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(s.decode(&euro[..1]), "");
        assert_eq!(s.decode(&euro[1..]), "€");
        assert_eq!(s.decode(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s.decode(&euro[..2]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn a_recording_reads_back() -> Result<(), Box<dyn std::error::Error>> {
        let mut buf = Vec::new();
        {
            let header = CastWriter::<Vec<u8>>::header(80, 24, "xterm", "t".into());
            let mut w = CastWriter::new(&mut buf, &header)?;
            w.output(b"hello \"world\"\r\n")?;
            w.resize(100, 30)?;
            w.input(b"ls\r")?;
            w.output("\u{1b}[1m€".as_bytes())?;
            w.finish()?;
        }
        let (header, events) = read(&buf[..])?;
        assert_eq!((header.width, header.height), (80, 24));
        let codes: Vec<&str> = events.iter().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["o", "r", "i", "o"]);
        assert_eq!(events[1].data, "100x30");
        let mut played = Vec::new();
        play(&events, &mut played, f64::INFINITY, Duration::ZERO)?;
        assert_eq!(played, "hello \"world\"\r\n\u{1b}[1m€".as_bytes());
        Ok(())
    }

    #[test]
    fn bad_files_name_the_line() {
        let e = read(&b"{\"version\":2,\"width\":1,\"height\":1}\n[0.1, \"o\", \"a\"]\n[x]\n"[..])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line 3"), "{e}");
        let e = read(&b"{\"version\":1,\"width\":1,\"height\":1}\n"[..])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("version 1"), "{e}");
        assert!(read(&b""[..]).is_err());
    }
}
