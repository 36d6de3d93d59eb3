//! How the command line prints: JSON for `--json`, and for people aligned tables, `label:
//! value` fields, lists, sizes and `-` for nothing, with every string from the store passed
//! through [`escape_controls`] so that none can drive the terminal.

use std::borrow::Cow;
use std::io::Write;

use anyhow::Result;
use serde::Serialize;

/// Writes `value` as pretty-printed JSON and a newline: the `--json` form of every command.
pub(super) fn print_json<T: Serialize>(out: &mut dyn Write, value: &T) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Whether `c` must not reach a terminal as it is: a control character (C0, DEL, C1), a
/// Unicode line or paragraph separator, or a bidirectional override or isolate (which reorder
/// what is shown around them).
fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` fit for an operator's terminal: each character [`is_unsafe_for_terminal`] is shown
/// as a visible escape (`\n`, `\r`, `\t`, `\x1b`, `\x7f`, `\u{85}`, `\u{202e}`), so a string
/// a device or a user chose can neither move the cursor, recolour the screen nor forge lines
/// of a table. Every human (not `--json`) output of a string from the store goes through this
/// one function; JSON output stays exact.
pub(super) fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_for_terminal) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_ascii() && is_unsafe_for_terminal(c) => {
                escaped.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if is_unsafe_for_terminal(c) => {
                escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Writes `label: value` lines with the values aligned after `width` columns, each value
/// escaped with [`escape_controls`].
pub(super) fn print_fields(
    out: &mut dyn Write,
    width: usize,
    rows: &[(&str, String)],
) -> Result<()> {
    for (label, value) in rows {
        writeln!(
            out,
            "{:<width$} {}",
            format!("{label}:"),
            escape_controls(value)
        )?;
    }
    Ok(())
}

/// Rows as aligned columns under a header; trailing blanks trimmed. Cells are escaped with
/// [`escape_controls`], so one cell is always one line.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|c| escape_controls(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let mut s = parts.join("  ").trim_end().to_string();
        s.push('\n');
        s
    };
    let mut text = line(&mut header.iter().copied());
    for row in &rows {
        text.push_str(&line(&mut row.iter().map(|c| c.as_ref())));
    }
    text
}

/// The value, or `-` for none.
pub(super) fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// A byte count for people: `512B`, `3.4K`, `29.5G` (powers of 1024, as `df -h`).
pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// A list under a label, one item per line indented by two blanks; `-` beside the label when
/// it is empty.
pub(super) fn print_list(out: &mut dyn Write, label: &str, items: &[String]) -> Result<()> {
    if items.is_empty() {
        writeln!(out, "{:<18} -", format!("{label}:"))?;
    } else {
        writeln!(out, "{label}:")?;
        for item in items {
            writeln!(out, "  {}", escape_controls(item))?;
        }
    }
    Ok(())
}

/// Words separated by blanks, or `-` when there are none.
pub(super) fn words(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned() {
        let rows = vec![
            vec!["a".to_string(), "long value".to_string(), "x".to_string()],
            vec!["longer".to_string(), "b".to_string(), String::new()],
        ];
        assert_eq!(
            table(&["ONE", "TWO", "THREE"], &rows),
            "ONE     TWO         THREE\na       long value  x\nlonger  b\n"
        );
    }

    #[test]
    fn control_characters_are_shown_as_escapes() {
        assert!(matches!(
            escape_controls("0.1.0 é ✓"),
            Cow::Borrowed("0.1.0 é ✓")
        ));
        assert_eq!(
            escape_controls("a\x1b[31mred\nfake row\r\tx\x00\x7f\u{9b}2J\u{85}\u{202e}z"),
            "a\\x1b[31mred\\nfake row\\r\\tx\\x00\\x7f\\u{9b}2J\\u{85}\\u{202e}z"
        );
        // One cell stays one line, and the columns stay aligned on what is shown.
        let rows = vec![
            vec!["a\nb".to_string(), "x".to_string()],
            vec!["\x1b".to_string(), "y".to_string()],
        ];
        assert_eq!(
            table(&["ONE", "TWO"], &rows),
            "ONE   TWO\na\\nb  x\n\\x1b  y\n"
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(29 * 1024 * 1024 * 1024), "29.0G");
    }
}
