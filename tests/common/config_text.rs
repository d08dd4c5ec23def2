//! A configuration file's text, built from the shipped example (or any
//! text) by small edits. Edits work on the text, never on a parsed and
//! rewritten file, so a case's file is the example but for the edit, and
//! a line number in an error points where the edit is. Every edit insists
//! that what it changes is there, so that a case never tests the unedited
//! file by accident.

use blobcheck::demo::EXAMPLE_CONFIG;

/// The example's URLs, which [`ConfigText::at_ports`] points elsewhere.
const GLOBAL_URL: &str = "\"mysql://blobcheck@127.0.0.1:3306\"";
const SHARD_URL: &str = "\"mysql://blobcheck@127.0.0.1:3307\"";

/// The text of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigText(String);

impl ConfigText {
    /// The shipped example (`examples/proton.toml`), as it is.
    pub fn example() -> ConfigText {
        ConfigText(EXAMPLE_CONFIG.to_owned())
    }

    /// Any text: a file written by hand, or not TOML at all.
    pub fn new(text: impl Into<String>) -> ConfigText {
        ConfigText(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The example's two servers, `global` and `shard1`, at these ports of
    /// 127.0.0.1, with the example's account and password variables.
    pub fn at_ports(&self, global: u16, shard: u16) -> ConfigText {
        self.replace(
            GLOBAL_URL,
            &format!("\"mysql://blobcheck@127.0.0.1:{global}\""),
        )
        .replace(
            SHARD_URL,
            &format!("\"mysql://blobcheck@127.0.0.1:{shard}\""),
        )
    }

    /// Every `from` replaced by `to`; `from` must be there.
    pub fn replace(&self, from: &str, to: &str) -> ConfigText {
        self.assert_holds(from);
        ConfigText(self.0.replace(from, to))
    }

    /// The first `from` replaced by `to`; `from` must be there.
    pub fn replace_first(&self, from: &str, to: &str) -> ConfigText {
        self.assert_holds(from);
        ConfigText(self.0.replacen(from, to, 1))
    }

    /// `key = value` in `section`, `value` written as TOML: the key's line
    /// is rewritten in place (its alignment kept) if the section has it,
    /// else added after the section's last key. `section` is a header as
    /// written (`[blobs]`, `[servers.shard1]`, `[check]`), or `[[NAME]] #n`
    /// for the n-th (1-based) entry of an array of tables.
    pub fn set(&self, section: &str, key: &str, value: &str) -> ConfigText {
        let mut lines = self.lines();
        let (_, end) = self.section(section);
        match self.key_line(section, key) {
            Some(at) => {
                let line = &lines[at];
                let equals = line.find('=').expect("a key line has `=`");
                lines[at] = format!("{}= {value}", &line[..equals]);
            }
            None => lines.insert(end, format!("{key} = {value}")),
        }
        ConfigText::from_lines(lines, &self.0)
    }

    /// `key`'s line removed from `section` (as in [`ConfigText::set`]); the
    /// section must have it.
    pub fn remove(&self, section: &str, key: &str) -> ConfigText {
        let at = self
            .key_line(section, key)
            .unwrap_or_else(|| panic!("`{key}` is not in {section}"));
        let mut lines = self.lines();
        lines.remove(at);
        ConfigText::from_lines(lines, &self.0)
    }

    /// `section`'s header and keys removed (the blank lines and comments
    /// around it stay).
    pub fn remove_section(&self, section: &str) -> ConfigText {
        let (start, end) = self.section(section);
        let mut lines = self.lines();
        lines.drain(start..end);
        ConfigText::from_lines(lines, &self.0)
    }

    /// The text from the first `from` up to the first `to` after it cut
    /// out (`to` stays); both must be there.
    pub fn cut(&self, from: &str, to: &str) -> ConfigText {
        let start = self
            .0
            .find(from)
            .unwrap_or_else(|| panic!("`{from}` is not in the text"));
        let end = start
            + self.0[start..]
                .find(to)
                .unwrap_or_else(|| panic!("`{to}` is not after `{from}`"));
        ConfigText(format!("{}{}", &self.0[..start], &self.0[end..]))
    }

    /// `text` added at the end.
    pub fn append(&self, text: &str) -> ConfigText {
        ConfigText(format!("{}{text}", self.0))
    }

    /// The text before the first `needle` (which must be there).
    pub fn before(&self, needle: &str) -> ConfigText {
        self.assert_holds(needle);
        ConfigText(self.0[..self.0.find(needle).unwrap()].to_owned())
    }

    /// 1-based number of the first line that contains `needle`.
    pub fn line_of(&self, needle: &str) -> usize {
        self.0
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("`{needle}` not in the text"))
            + 1
    }

    /// 1-based number of the first line that is exactly `line`.
    pub fn line_equal_to(&self, line: &str) -> usize {
        self.0
            .lines()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no line `{line}` in the text"))
            + 1
    }

    /// The first line that starts with `start` and contains `contains`.
    pub fn line_starting(&self, start: &str, contains: &str) -> String {
        self.0
            .lines()
            .find(|l| l.starts_with(start) && l.contains(contains))
            .unwrap_or_else(|| panic!("no line starting with `{start}` holds `{contains}`"))
            .to_owned()
    }

    fn assert_holds(&self, needle: &str) {
        assert!(
            self.0.contains(needle),
            "`{needle}` is not in the text to edit"
        );
    }

    fn lines(&self) -> Vec<String> {
        self.0.lines().map(str::to_owned).collect()
    }

    /// The lines again, ending with a line break if the text did.
    fn from_lines(lines: Vec<String>, original: &str) -> ConfigText {
        let mut text = lines.join("\n");
        if original.ends_with('\n') {
            text.push('\n');
        }
        ConfigText(text)
    }

    /// The lines of `section`: its header and the key lines that follow it
    /// up to the first blank line, comment or header, as a range of line
    /// indexes.
    fn section(&self, section: &str) -> (usize, usize) {
        let (header, nth) = match section.split_once(" #") {
            Some((header, n)) => (header, n.parse::<usize>().expect("`#n` is a number")),
            None => (section, 1),
        };
        let lines = self.lines();
        let start = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim_end() == header)
            .nth(nth - 1)
            .unwrap_or_else(|| panic!("no section {section} in the text"))
            .0;
        let end = (start + 1..lines.len())
            .find(|&i| {
                let line = lines[i].trim_start();
                line.is_empty() || line.starts_with('#') || line.starts_with('[')
            })
            .unwrap_or(lines.len());
        (start, end)
    }

    /// The index of `key`'s line in `section`, if it has one.
    fn key_line(&self, section: &str, key: &str) -> Option<usize> {
        let (start, end) = self.section(section);
        let lines = self.lines();
        (start + 1..end).find(|&i| {
            lines[i]
                .split_once('=')
                .is_some_and(|(name, _)| name.trim() == key)
        })
    }
}
