//! `check --metrics-push URL`: a run's metrics delivered to a Prometheus
//! Pushgateway, for the places node_exporter's textfile collector cannot
//! reach (a Kubernetes Job, a host without node_exporter).
//!
//! Each run's series go to one group, `/metrics/job/JOB[/partition/K/N]`,
//! so that the N partitions of an Indexed Job keep N groups and never
//! overwrite each other; the grouping key supplies those labels, so the
//! body carries none of them (the Pushgateway refuses a push whose series
//! contradict its grouping key). A label value that is not a plain word
//! (`2/8` has a slash) is sent base64url-encoded, as the Pushgateway's
//! `label@base64` path form allows.
//!
//! A completed run **replaces** its group (HTTP PUT): series of the last run
//! that this one has not (a kind of finding no longer found) go away. A
//! failed run **updates** it (HTTP POST): its `blobcheck_last_run_*` series
//! replace the old ones, and the last success's series stay, with their
//! `blobcheck_last_success_timestamp_seconds`, so that alerts see both the
//! failure and how old the findings are. The Pushgateway adds
//! `push_time_seconds` and `push_failure_time_seconds` to every group.
//!
//! A running check also pushes how far it is (`blobcheck_check_running`,
//! `…_progress_ratio`, `…_rows_read`, `…_started_timestamp_seconds`) at its
//! start and every 30 seconds, as updates; its last push sets
//! `blobcheck_check_running` to 0.
//!
//! The push is a blocking HTTP request (`ureq`, with rustls for `https://`);
//! the run's last push is tried [`ATTEMPTS`] times, [`TIMEOUT`] each, before
//! the run reports that it could not deliver its metrics.

use std::time::Duration;

use base64::Engine;

use crate::error::{Error, Result, one_line};

/// Tries before giving up.
pub const ATTEMPTS: u32 = 3;
/// Time for one try, from connecting to the answer's end.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before the second try; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Where a run's metrics go: the Pushgateway's base URL and the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://host:9091` or `https://…`, without `/metrics`.
    base: String,
    /// The grouping key, `job` first.
    grouping: Vec<(String, String)>,
}

/// Whether the push replaces the group or updates some of its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP PUT: the group holds exactly what is pushed.
    Replace,
    /// HTTP POST: the series pushed replace those of the same name; the
    /// group's other series stay.
    Update,
}

impl Target {
    /// `url` is the Pushgateway's address (`http://` or `https://`, any path
    /// prefix it is served under), `job` the group's `job` label, `labels`
    /// further grouping labels (e.g. `partition`).
    pub fn new(url: &str, job: &str, labels: &[(String, String)]) -> Result<Target> {
        let usage = |reason: String| Error::Usage(format!("--metrics-push {url}: {reason}"));
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| {
                usage("the Pushgateway's URL must start with http:// or https://".into())
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(usage("the URL names no host".into()));
        }
        if rest.contains(['?', '#']) {
            return Err(usage(
                "the URL may not carry a query or a fragment; give the Pushgateway's base address"
                    .into(),
            ));
        }
        if rest.trim_end_matches('/').ends_with("/metrics") || rest.contains("/metrics/") {
            return Err(usage(
                "give the Pushgateway's base address (http://host:9091), without /metrics/job/…: blobcheck adds the group".into(),
            ));
        }
        if job.is_empty() {
            return Err(Error::Usage("--metrics-job may not be empty".into()));
        }
        let mut grouping = vec![("job".to_owned(), job.to_owned())];
        for (name, value) in labels {
            if grouping.iter().any(|(n, _)| n == name) {
                return Err(Error::Usage(format!(
                    "--metrics-push: the grouping label `{name}` is given twice"
                )));
            }
            grouping.push((name.clone(), value.clone()));
        }
        Ok(Target {
            base: url.trim_end_matches('/').to_owned(),
            grouping,
        })
    }

    /// The group's URL: `BASE/metrics/job/JOB/label/value…`.
    pub fn url(&self) -> String {
        let mut url = format!("{}/metrics", self.base);
        for (name, value) in &self.grouping {
            url.push('/');
            url.push_str(&path_pair(name, value));
        }
        url
    }

    /// Sends `body` (Prometheus text format) to the group, trying
    /// `attempts` times (at least once). Blocking: call it off the async
    /// runtime.
    pub fn push(&self, body: &str, mode: Mode, attempts: u32) -> Result<()> {
        let url = self.url();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            // A 4xx or 5xx answer is read here, for its message.
            .http_status_as_error(false)
            .build()
            .into();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let sent = match mode {
                Mode::Replace => agent
                    .put(&url)
                    .content_type(CONTENT_TYPE)
                    .send(body.as_bytes()),
                Mode::Update => agent
                    .post(&url)
                    .content_type(CONTENT_TYPE)
                    .send(body.as_bytes()),
            };
            let failure = match sent {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(mut response) => {
                    let status = response.status();
                    let text = response
                        .body_mut()
                        .with_config()
                        .limit(4096)
                        .read_to_string()
                        .unwrap_or_default();
                    let text = one_line(text.trim());
                    let failure = format!("the Pushgateway answered {status}: {text}");
                    // A client error (a refused body or grouping key) does not
                    // go away by asking again.
                    if status.is_client_error() {
                        return Err(self.failed(&url, failure));
                    }
                    failure
                }
                Err(e) => one_line(e),
            };
            if attempt >= attempts {
                let tried = if attempts > 1 {
                    format!(" (tried {attempts} times)")
                } else {
                    String::new()
                };
                return Err(self.failed(&url, format!("{failure}{tried}")));
            }
            tracing::warn!("pushing the metrics to {url} failed ({failure}); trying again");
            std::thread::sleep(backoff);
            backoff *= 2;
            attempt += 1;
        }
    }

    fn failed(&self, url: &str, reason: String) -> Error {
        Error::Output {
            path: format!("the metrics to the Pushgateway at {url}"),
            reason,
        }
    }
}

/// What the body is: the text format that [`crate::metrics::encode`] writes.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One `name/value` step of a group's path; a value that is not a plain
/// word goes base64url-encoded (`name@base64/…`), an empty one as `=`.
fn path_pair(name: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if plain {
        format!("{name}/{value}")
    } else if value.is_empty() {
        format!("{name}@base64/=")
    } else {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value);
        format!("{name}@base64/{encoded}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_group_path_encodes_what_is_not_a_plain_word() {
        let target = Target::new(
            "http://pushgateway:9091/",
            "blobcheck",
            &labels(&[("partition", "2/8")]),
        )
        .unwrap();
        // "2/8" in base64url is "Mi84".
        assert_eq!(
            target.url(),
            "http://pushgateway:9091/metrics/job/blobcheck/partition@base64/Mi84"
        );
        let target = Target::new("https://gw.example/push", "nightly check", &[]).unwrap();
        assert_eq!(
            target.url(),
            "https://gw.example/push/metrics/job@base64/bmlnaHRseSBjaGVjaw"
        );
        assert_eq!(path_pair("x", ""), "x@base64/=");
        assert_eq!(path_pair("x", "a.b-c_d:1"), "x/a.b-c_d:1");
    }

    #[test]
    fn bad_targets_are_refused_in_one_line() {
        for (url, job, expected) in [
            ("pushgateway:9091", "blobcheck", "must start with http://"),
            ("http://", "blobcheck", "names no host"),
            ("http:///metrics", "blobcheck", "names no host"),
            (
                "http://gw:9091/metrics/job/x",
                "blobcheck",
                "without /metrics",
            ),
            ("http://gw:9091/metrics", "blobcheck", "without /metrics"),
            ("http://gw:9091/?a=b", "blobcheck", "query"),
            ("http://gw:9091", "", "may not be empty"),
        ] {
            let error = Target::new(url, job, &[]).unwrap_err().to_string();
            assert!(error.contains(expected), "{url} {job:?}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        let twice = Target::new("http://gw:9091", "b", &labels(&[("job", "x")]));
        assert!(twice.unwrap_err().to_string().contains("given twice"));
    }
}
