//! Newline-delimited text read in bounded memory, in batches of the lines that arrived together.
//!
//! Every stream of lines the agent reads from a process it does not control goes through
//! [`LineReader`]: the producer socket, the output of supervised applications and the journal
//! follower's `journalctl`. A program that prints 200 MiB without a newline must not make the
//! agent hold 200 MiB: a line longer than the limit keeps its first `max_line` bytes, is marked
//! [`Line::truncated`], and the rest of it is read and dropped as it arrives, never buffered.
//!
//! Lines are handed out in batches of those already read from the stream (see
//! [`LineReader::next_batch`]), so a source writing fast is appended to the outbox in few large
//! transactions and a source writing one line at a time still sees each line at once. Memory
//! stays bounded by the limit plus the read buffer: after the first line of a batch, only lines
//! wholly inside the buffer join it.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Default size of the read buffer.
pub const DEFAULT_CAPACITY: usize = 64 * 1024;

/// One line, without its end (`\n`, and any `\r` before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The line's bytes: all of them, or the first `max_line` of a longer line.
    pub bytes: Vec<u8>,
    /// Whether the line was longer than the limit and `bytes` holds only its start.
    pub truncated: bool,
}

impl Line {
    /// The line as text, invalid UTF-8 replaced (programs print what they print).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }
}

/// Reads lines of at most `max_line` bytes from `R`.
pub struct LineReader<R> {
    reader: BufReader<R>,
    max_line: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader of `reader` keeping at most `max_line` bytes of a line, with a read buffer of
    /// [`DEFAULT_CAPACITY`].
    pub fn new(reader: R, max_line: usize) -> Self {
        Self::with_capacity(DEFAULT_CAPACITY, reader, max_line)
    }

    /// Like [`LineReader::new`] with a read buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize, reader: R, max_line: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(capacity, reader),
            max_line,
        }
    }

    /// The longest line kept whole.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The next line, waiting for it; `None` at the end of the stream. A last line without a
    /// newline is a line.
    pub async fn next_line(&mut self) -> io::Result<Option<Line>> {
        // One byte beyond the limit is kept so that a `\r` right before the newline does not
        // count against it; whatever comes after that is dropped as it is read.
        let keep = self.max_line.saturating_add(1);
        let mut bytes = Vec::new();
        let mut dropped = false;
        let mut consumed_any = false;
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                if !consumed_any {
                    return Ok(None);
                }
                break;
            }
            consumed_any = true;
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let content = if done { take - 1 } else { take };
            let room = keep - bytes.len();
            bytes.extend_from_slice(&chunk[..content.min(room)]);
            dropped |= content > room;
            self.reader.consume(take);
            if done {
                break;
            }
        }
        while bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let truncated = dropped || bytes.len() > self.max_line;
        if truncated {
            bytes.truncate(self.max_line);
            cut_partial_char(&mut bytes);
        }
        Ok(Some(Line { bytes, truncated }))
    }

    /// The lines that have arrived together: waits for the first, then takes those already
    /// in the read buffer, up to `max_lines`. Empty at the end of the stream.
    pub async fn next_batch(&mut self, max_lines: usize) -> io::Result<Vec<Line>> {
        let mut batch = Vec::new();
        while let Some(line) = self.next_line().await? {
            batch.push(line);
            if batch.len() >= max_lines || !self.reader.buffer().contains(&b'\n') {
                break;
            }
        }
        Ok(batch)
    }
}

/// Drops the bytes of a UTF-8 character that a cut split at the end of `bytes`, so the kept
/// start of a long line does not end in a replacement character; bytes that are not UTF-8
/// anyway are left as they are.
fn cut_partial_char(bytes: &mut Vec<u8>) {
    if let Err(e) = std::str::from_utf8(bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Result<(), Box<dyn std::error::Error>>;

    fn line(text: &str, truncated: bool) -> Line {
        Line {
            bytes: text.as_bytes().to_vec(),
            truncated,
        }
    }

    async fn all_lines(reader: &mut LineReader<impl AsyncRead + Unpin>) -> io::Result<Vec<Line>> {
        let mut lines = Vec::new();
        while let Some(l) = reader.next_line().await? {
            lines.push(l);
        }
        Ok(lines)
    }

    #[tokio::test]
    async fn lines_lose_their_ends_and_a_last_line_needs_no_newline() -> R {
        let input: &[u8] = b"one\ntwo\r\n\nlast";
        let mut r = LineReader::new(input, 100);
        let lines = all_lines(&mut r).await?;
        assert_eq!(
            lines,
            [
                line("one", false),
                line("two", false),
                line("", false),
                line("last", false)
            ]
        );
        assert_eq!(r.next_line().await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn an_empty_stream_has_no_lines() -> R {
        let mut r = LineReader::new(&b""[..], 10);
        assert_eq!(r.next_line().await?, None);
        assert!(r.next_batch(10).await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn the_limit_holds_and_the_rest_of_a_long_line_is_dropped() -> R {
        let mut input = vec![b'x'; 10_000];
        input.extend_from_slice(b"\nnext\n");
        input.extend_from_slice(&[b'y'; 11]);
        // A line of exactly the limit, and one of the limit with a CRLF end, are whole.
        input.extend_from_slice(b"\n0123456789\n0123456789\r\n");
        let mut r = LineReader::with_capacity(64, &input[..], 10);
        let lines = all_lines(&mut r).await?;
        assert_eq!(
            lines,
            [
                line("xxxxxxxxxx", true),
                line("next", false),
                line("yyyyyyyyyy", true),
                line("0123456789", false),
                line("0123456789", false),
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_long_line_at_the_end_without_newline_is_cut() -> R {
        let input = vec![b'z'; 1000];
        let mut r = LineReader::with_capacity(16, &input[..], 5);
        assert_eq!(all_lines(&mut r).await?, [line("zzzzz", true)]);
        Ok(())
    }

    #[tokio::test]
    async fn a_cut_does_not_split_a_character() -> R {
        // "é" is two bytes: a limit of 3 keeps "aé" whole, a limit of 2 keeps "a".
        let input = "aéé\n".as_bytes();
        assert_eq!(
            all_lines(&mut LineReader::new(input, 3)).await?,
            [line("aé", true)]
        );
        assert_eq!(
            all_lines(&mut LineReader::new(input, 2)).await?,
            [line("a", true)]
        );
        Ok(())
    }

    #[tokio::test]
    async fn lines_split_across_reads_are_joined() -> R {
        // Each read returns a few bytes, cutting lines and CRLF ends apart.
        let (mut tx, rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in [
                &b"he"[..],
                b"llo\r",
                b"\nwor",
                b"ld\n",
                b"0123456",
                b"789abc\n",
            ] {
                tx.write_all(piece).await?;
                tokio::task::yield_now().await;
            }
            tx.shutdown().await
        });
        let mut r = LineReader::with_capacity(4, rx, 8);
        let lines = all_lines(&mut r).await?;
        writer.await??;
        assert_eq!(
            lines,
            [
                line("hello", false),
                line("world", false),
                line("01234567", true)
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_is_what_has_arrived_up_to_its_size() -> R {
        let input: &[u8] = b"a\nb\nc\nd\ne";
        let mut r = LineReader::new(input, 10);
        let texts = |b: Vec<Line>| -> Vec<String> { b.iter().map(|l| l.text().into()).collect() };
        assert_eq!(texts(r.next_batch(3).await?), ["a", "b", "c"]);
        // "e" has no newline in the buffer: the batch ends before waiting for more.
        assert_eq!(texts(r.next_batch(3).await?), ["d"]);
        assert_eq!(texts(r.next_batch(3).await?), ["e"]);
        assert!(r.next_batch(3).await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_never_holds_more_than_the_limit_and_one_buffer() -> R {
        // Long lines back to back: after the first line, only lines wholly inside the read
        // buffer join a batch, so a batch holds at most about max_line + capacity bytes.
        let mut input = Vec::new();
        for _ in 0..50 {
            input.extend_from_slice(&[b'q'; 3000]);
            input.push(b'\n');
        }
        let mut r = LineReader::with_capacity(1024, &input[..], 2000);
        loop {
            let batch = r.next_batch(usize::MAX).await?;
            if batch.is_empty() {
                break;
            }
            let bytes: usize = batch.iter().map(|l| l.bytes.len()).sum();
            assert!(bytes <= 2000 + 1024, "{bytes}");
            assert!(batch.iter().all(|l| l.truncated && l.bytes.len() == 2000));
        }
        Ok(())
    }

    #[tokio::test]
    async fn invalid_utf8_is_kept_as_bytes_and_replaced_in_text() -> R {
        let input: &[u8] = b"bad \xff byte\n";
        let lines = all_lines(&mut LineReader::new(input, 100)).await?;
        assert_eq!(lines[0].bytes, b"bad \xff byte");
        assert_eq!(lines[0].text(), "bad \u{FFFD} byte");
        Ok(())
    }
}
