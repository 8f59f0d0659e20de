//! `token list`'s table, laid out as `kubeadm token list` 1.20 lays it out (the same
//! columns, `<forever>`/`<never>`/`<none>` for what is unset, the same short TTLs), so
//! scripts that read one read the other.

use jiff::Timestamp;

use super::BootstrapToken;

const HEADER: [&str; 6] = [
    "TOKEN",
    "TTL",
    "EXPIRES",
    "USAGES",
    "DESCRIPTION",
    "EXTRA GROUPS",
];

/// A time left as Kubernetes prints ages: `45s`, `12m`, `23h`, `6d`, `2y`.
fn short_duration(seconds: i64) -> String {
    match seconds {
        s if s < -1 => "<invalid>".to_owned(),
        s if s < 0 => "0s".to_owned(),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 24 * 3600 => format!("{}h", s / 3600),
        s if s < 365 * 24 * 3600 => format!("{}d", s / (24 * 3600)),
        s => format!("{}y", s / (365 * 24 * 3600)),
    }
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".to_owned()
    } else {
        text
    }
}

fn sorted(items: &[String]) -> Vec<String> {
    let mut items = items.to_vec();
    items.sort();
    items
}

/// The rows of `tokens` at `now`, header first.
fn rows(tokens: &[BootstrapToken], now: Timestamp) -> Vec<[String; 6]> {
    let mut rows = vec![HEADER.map(str::to_owned)];
    for t in tokens {
        let (ttl, expires) = match t.expires {
            // Whole seconds left, rounded down as Go's `int(d.Seconds())` does: a
            // token of 2h listed a moment after it was made has 1h left.
            Some(at) => (
                short_duration(at.duration_since(now).as_secs()),
                at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            ),
            None => ("<forever>".to_owned(), "<never>".to_owned()),
        };
        rows.push([
            t.token.to_string(),
            format!("{ttl:<9}"),
            expires,
            format!("{:<22}", or_none(sorted(&t.usages).join(","))),
            format!("{:<56}", or_none(t.description.clone())),
            or_none(t.groups.join(",")),
        ]);
    }
    rows
}

/// The table of `tokens` at `now`, laid out as kubeadm's printer does: a Go tabwriter
/// (cells as wide as their widest plus 3 spaces, at least 10; the last column
/// unpadded) flushed once per token, so the header is aligned with the first row and
/// every later row on its own.
pub fn table(tokens: &[BootstrapToken], now: Timestamp) -> String {
    if tokens.is_empty() {
        // kubeadm prints its header with the first token, so nothing for none.
        return String::new();
    }
    let rows = rows(tokens, now);
    let mut out = String::new();
    let (first, rest) = rows.split_at(rows.len().min(2));
    for block in std::iter::once(first).chain(rest.chunks(1)) {
        let mut widths = [0usize; 6];
        for row in block {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count() + 3).max(10);
            }
        }
        for row in block {
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<width$}", width = widths[i]));
                }
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubernetes_prints_them() {
        for (seconds, text) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (3600, "1h"),
            (86_399, "23h"),
            (86_400, "1d"),
            (400 * 86_400, "1y"),
        ] {
            assert_eq!(short_duration(seconds), text, "{seconds}");
        }
    }
}
