//! Samples of the Prometheus text exposition format (0.0.4), as kube-apiserver's
//! `/metrics` serves them.
//!
//! Hand-rolled: only the sample lines are needed (name, labels, value), which is a small
//! line grammar; `prometheus-parse`, the crate on offer, is not in the lock file and
//! pulls regex and chrono for it.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};

/// One sample: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, with any `_sum`/`_count`/`_bucket` suffix.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Vec<Sample>);

impl Metrics {
    /// Parses a scrape; comment lines (`# HELP`, `# TYPE`) and blank lines are skipped.
    ///
    /// # Errors
    /// A malformed sample line, with its line number.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(i, l)| parse_line(l).with_context(|| format!("metrics line {}: {l}", i + 1)))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Self)
    }

    /// The sum of the samples named `name` whose labels `matches` accepts.
    pub fn sum(&self, name: &str, matches: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name && matches(&s.labels))
            .map(|s| s.value)
            .sum()
    }

    /// The sums of the samples named `name`, grouped by what `key` makes of their labels.
    pub fn sum_by(
        &self,
        name: &str,
        key: impl Fn(&BTreeMap<String, String>) -> String,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            *out.entry(key(&s.labels)).or_insert(0.0) += s.value;
        }
        out
    }
}

fn parse_line(line: &str) -> anyhow::Result<Sample> {
    let line = line.trim();
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = line[..name_end].to_owned();
    if name.is_empty() {
        bail!("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().context("no value")?;
    let value = value
        .parse::<f64>()
        .with_context(|| format!("value {value:?}"))?;
    // An optional timestamp may follow; nothing else may.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .with_context(|| format!("timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        bail!("trailing text");
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Reads `key="value",...}` into `labels`; returns the text after the `}`.
fn parse_labels<'a>(
    mut text: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> anyhow::Result<&'a str> {
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Ok(after);
        }
        let eq = text.find('=').context("label without '='")?;
        let key = text[..eq].trim().to_owned();
        let quoted = text[eq + 1..].trim_start();
        let mut chars = quoted.char_indices();
        match chars.next() {
            Some((_, '"')) => {}
            _ => bail!("label {key} has no quoted value"),
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let end = end.with_context(|| format!("label {key}: unterminated value"))?;
        labels.insert(key, value);
        text = quoted[end + 1..].trim_start();
        if let Some(after) = text.strip_prefix(',') {
            text = after;
        } else if !text.starts_with('}') {
            bail!("expected ',' or '}}' after a label");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",contentType="application/vnd.kubernetes.protobuf",dry_run="",group="coordination.k8s.io",resource="leases",scope="namespace",subresource="",verb="PUT",version="v1"} 120
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="",resource="nodes",scope="resource",subresource="",verb="GET",version="v1"} 33
apiserver_request_total{code="201",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1"} 4
apiserver_registered_watchers{group="",kind="Node",version="v1"} 7
apiserver_watch_events_sizes_sum{group="",kind="Node",version="v1"} 1.2345e+06
apiserver_watch_events_sizes_bucket{group="",kind="Node",version="v1",le="+Inf"} 12
process_start_time_seconds 1.6e+09 1700000000000

"#;

    #[test]
    fn a_kube_apiserver_scrape_sums_by_label_and_filter() {
        let m = Metrics::parse(SCRAPE).unwrap();
        assert_eq!(m.sum("apiserver_request_total", |_| true), 157.0);
        assert_eq!(
            m.sum("apiserver_request_total", |l| l["verb"] == "PUT"),
            120.0
        );
        assert_eq!(
            m.sum("apiserver_request_total", |l| l["verb"] == "GET"),
            33.0
        );
        assert_eq!(
            m.sum("apiserver_request_total", |l| l["resource"] == "pods"),
            4.0
        );
        assert_eq!(m.sum("apiserver_registered_watchers", |_| true), 7.0);
        assert_eq!(
            m.sum("apiserver_watch_events_sizes_sum", |l| l["kind"] == "Node"),
            1_234_500.0
        );
        assert_eq!(
            m.sum("apiserver_watch_events_sizes_bucket", |l| l["le"] == "+Inf"),
            12.0
        );
        assert_eq!(m.sum("process_start_time_seconds", |_| true), 1.6e9);
        assert_eq!(m.sum("no_such_metric", |_| true), 0.0);
    }

    #[test]
    fn escapes_and_special_values_parse() {
        let m = Metrics::parse(
            "m{a=\"x\\\"y\",b=\"c\\\\d\",c=\"e\\nf\", d = \"}{,\"} +Inf\nn NaN\nk -Inf\n",
        )
        .unwrap();
        let s = &m.0[0];
        assert_eq!(s.labels["a"], "x\"y");
        assert_eq!(s.labels["b"], "c\\d");
        assert_eq!(s.labels["c"], "e\nf");
        assert_eq!(s.labels["d"], "}{,");
        assert_eq!(s.value, f64::INFINITY);
        assert!(m.0[1].value.is_nan());
        assert_eq!(m.0[2].value, f64::NEG_INFINITY);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for bad in [
            "m{a=\"x\"} ",
            "m{a=x} 1",
            "m{a=\"x\" 1",
            "m{a=\"x} 1",
            "m 1 2 3",
            "m one",
            "{a=\"x\"} 1",
        ] {
            let err = Metrics::parse(&format!("# ok\n{bad}\n")).unwrap_err();
            assert!(format!("{err:#}").contains("line 2"), "{bad}: {err:#}");
        }
    }
}
