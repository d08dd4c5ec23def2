//! The doctor's report: one line per fact, each with a [`Mark`], grouped in
//! sections, and the verdict that repeats every warning and problem with
//! its fix.

use std::io::Write;

use crate::error::{Error, Result, one_line};

/// The status of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Ok,
    Info,
    Skip,
    Warn,
    Fail,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Ok => "ok",
            Mark::Info => "info",
            Mark::Skip => "skip",
            Mark::Warn => "WARN",
            Mark::Fail => "FAIL",
        }
    }
}

/// A warning or a problem, kept for the verdict.
struct Noted {
    mark: Mark,
    subject: String,
    message: String,
    fix: Option<String>,
}

/// Writes the lines and keeps the warnings and problems.
pub(super) struct Report<'a> {
    out: &'a mut dyn Write,
    subject: String,
    noted: Vec<Noted>,
}

fn output_error(e: std::io::Error) -> Error {
    Error::Output {
        path: "output".into(),
        reason: one_line(e),
    }
}

/// `1 server`, `2 servers`.
pub(super) fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

impl Report<'_> {
    pub(super) fn new(out: &mut dyn Write) -> Report<'_> {
        Report {
            out,
            subject: String::new(),
            noted: Vec::new(),
        }
    }

    pub(super) fn write(&mut self, text: &str) -> Result<()> {
        self.out.write_all(text.as_bytes()).map_err(output_error)
    }

    /// Starts a section about `subject`.
    pub(super) fn section(&mut self, subject: String) -> Result<()> {
        self.write(&format!("\n{subject}\n"))?;
        self.subject = subject;
        Ok(())
    }

    pub(super) fn line(&mut self, mark: Mark, message: impl Into<String>) -> Result<()> {
        self.line_fix(mark, message, None::<String>)
    }

    pub(super) fn line_fix(
        &mut self,
        mark: Mark,
        message: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) -> Result<()> {
        let message = message.into();
        let fix = fix.map(Into::into);
        let mut text = format!("  {:<4}  {message}\n", mark.as_str());
        if let Some(fix) = &fix {
            // A remedy for a problem; for what is only worth knowing, a hint.
            let word = if matches!(mark, Mark::Warn | Mark::Fail) {
                "fix"
            } else {
                "hint"
            };
            text.push_str(&format!("        {word}: {fix}\n"));
        }
        self.write(&text)?;
        if matches!(mark, Mark::Warn | Mark::Fail) {
            self.noted.push(Noted {
                mark,
                subject: self.subject.clone(),
                message,
                fix,
            });
        }
        Ok(())
    }

    pub(super) fn problems(&self) -> usize {
        self.noted.iter().filter(|n| n.mark == Mark::Fail).count()
    }

    /// The last lines: the verdict, then every problem and warning again
    /// with its fix, problems first.
    pub(super) fn verdict(&mut self) -> Result<bool> {
        let problems = self.problems();
        let warnings = self.noted.len() - problems;
        let verdict = match (problems, warnings) {
            (0, 0) => "verdict: READY: blobcheck check can run".to_owned(),
            (0, w) => format!(
                "verdict: READY with {}: blobcheck check can run",
                plural(w as u64, "warning")
            ),
            (p, w) => format!(
                "verdict: NOT READY: {}, {}; fix the FAIL lines, then run blobcheck doctor again",
                plural(p as u64, "problem"),
                plural(w as u64, "warning")
            ),
        };
        let mut text = format!("\n{verdict}\n");
        let mut noted: Vec<&Noted> = self.noted.iter().collect();
        noted.sort_by_key(|n| n.mark != Mark::Fail);
        for n in noted {
            text.push_str(&format!(
                "  {:<4}  {}: {}\n",
                n.mark.as_str(),
                n.subject,
                n.message
            ));
            if let Some(fix) = &n.fix {
                text.push_str(&format!("        fix: {fix}\n"));
            }
        }
        self.write(&text)?;
        self.out.flush().map_err(output_error)?;
        Ok(problems == 0)
    }
}
