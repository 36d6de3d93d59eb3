//! `relay telemetry …`: a device's stored records, and new ones as they arrive.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use super::output::escape_controls;
use crate::store::Store;

/// `relay telemetry …`
#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// Print a device's stored records, oldest first.
    Tail {
        /// Device id or name.
        device: String,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Most records to print (the newest ones).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing new records as they arrive.
        #[arg(long)]
        follow: bool,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn print_record(out: &mut dyn Write, r: &crate::store::StoredRecord, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, r)?;
        writeln!(out)?;
    } else {
        let level = r
            .level
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        let line = format!(
            "{} #{} {} {}{} {}",
            r.ts, r.seq, r.kind, r.topic, level, r.payload
        );
        writeln!(out, "{}", escape_controls(&line))?;
    }
    Ok(())
}

fn page_query<'a>(
    device_id: &'a str,
    topic: Option<&'a str>,
    after: u64,
) -> crate::store::TelemetryQuery<'a> {
    crate::store::TelemetryQuery {
        device_id,
        topic,
        after_seq: after,
        limit: 10_000,
        ..Default::default()
    }
}

fn tail(
    out: &mut dyn Write,
    store: &Store,
    device: &str,
    topic: Option<&str>,
    limit: usize,
    follow: bool,
    json: bool,
) -> Result<()> {
    let d = store.resolve_device(device)?;
    // The newest `limit` records: read everything after the start in pages, keep the tail.
    let mut after = 0u64;
    let mut last: std::collections::VecDeque<crate::store::StoredRecord> =
        std::collections::VecDeque::new();
    loop {
        let page = store.telemetry(&page_query(&d.id, topic, after))?;
        let Some(end) = page.last().map(|r| r.seq) else {
            break;
        };
        after = end;
        for r in page {
            last.push_back(r);
            if last.len() > limit {
                last.pop_front();
            }
        }
    }
    for r in &last {
        print_record(out, r, json)?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        for r in store.telemetry(&page_query(&d.id, topic, after))? {
            after = r.seq;
            print_record(out, &r, json)?;
        }
        // Whoever reads a follow wants each record when it arrives, not when a buffer fills.
        out.flush()?;
    }
}

/// Runs a `relay telemetry` command.
pub(super) fn run(out: &mut dyn Write, store: &Store, cmd: TelemetryCommand) -> Result<()> {
    match cmd {
        TelemetryCommand::Tail {
            device,
            topic,
            limit,
            follow,
            json,
        } => tail(out, store, &device, topic.as_deref(), limit, follow, json),
    }
}
