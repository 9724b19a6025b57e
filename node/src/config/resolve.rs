//! Resolution of one section's options as Barman does it: the section, then
//! `[barman]` for inherited options, then the default; invalid values warn and
//! fall through; an empty value may unset an option and block inheritance.

use super::ConfigWarning;
use super::ini::{Ini, Origin, interpolate, strip_quotes};
use super::options::{Scope, spec};
use super::types::{OptType, Parsed};
use std::collections::HashMap;

pub(super) struct Resolver<'a> {
    pub ini: &'a Ini,
    pub section: &'a str,
    /// Built-in names for interpolation and defaults (`name`, `barman_home`).
    pub builtins: Vec<(&'static str, String)>,
    /// Whether `[barman]` and defaults apply (not for models).
    pub inherit: bool,
    /// String forms of options resolved so far, for `%(option)s` in defaults.
    computed: HashMap<&'static str, String>,
    pub sources: HashMap<&'static str, Origin>,
    pub warnings: Vec<ConfigWarning>,
    /// Values set but not used (bad text, bad interpolation), beside their warnings: the
    /// cluster's options must refuse, not fall back.
    pub rejected: Vec<Rejected>,
}

/// A value the resolver could not use.
pub(super) struct Rejected {
    pub key: &'static str,
    pub section: String,
    pub origin: Origin,
    /// What is wrong and what is expected.
    pub why: String,
}

impl Rejected {
    /// `file:line: option 'key' in [section]: why`.
    pub fn line(&self) -> String {
        format!("{}: option '{}' in [{}]: {}", self.origin, self.key, self.section, self.why)
    }
}

/// What happened to one candidate value.
enum Attempt<T> {
    Found(T),
    Skipped,
}

impl<'a> Resolver<'a> {
    pub fn new(ini: &'a Ini, section: &'a str, builtins: Vec<(&'static str, String)>, inherit: bool) -> Self {
        Resolver {
            ini,
            section,
            builtins,
            inherit,
            computed: HashMap::new(),
            sources: HashMap::new(),
            warnings: Vec::new(),
            rejected: Vec::new(),
        }
    }

    fn builtin(&self, key: &str) -> Option<String> {
        self.builtins.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    /// The raw text of `key` in `section` after interpolation and quote stripping.
    fn text(&mut self, section: &str, key: &'static str) -> Option<(String, Origin)> {
        let raw = self.ini.raw(section, key)?;
        let lookup = |name: &str| -> Option<String> {
            self.ini.raw(section, name).map(|v| v.value.clone()).or_else(|| self.builtin(name))
        };
        match interpolate(key, &raw.value, &lookup, 0) {
            Ok(v) => {
                // Barman turns a literal None into an empty value before it strips
                // quotes, so a quoted "None" stays the text None.
                let v = if v == "None" { String::new() } else { strip_quotes(&v).to_string() };
                Some((v, raw.origin.clone()))
            }
            Err(e) => {
                self.warnings.push(ConfigWarning::at(&raw.origin, format!("[{section}] {e}; the value is ignored")));
                let (origin, why) = (raw.origin.clone(), e.to_string());
                self.rejected.push(Rejected { key, section: section.to_string(), origin, why });
                None
            }
        }
    }

    fn attempt<T: OptType>(
        &mut self,
        section: &str,
        key: &'static str,
        notes: &mut Vec<(Origin, String)>,
    ) -> Attempt<T> {
        let Some((text, origin)) = self.text(section, key) else {
            return Attempt::Skipped;
        };
        match T::parse(&text) {
            Parsed::Set(v) => {
                self.sources.insert(key, origin);
                Attempt::Found(v)
            }
            Parsed::Adjusted(v, why) => {
                self.warnings.push(ConfigWarning::at(&origin, format!("option '{key}' in [{section}]: {why}")));
                self.sources.insert(key, origin);
                Attempt::Found(v)
            }
            Parsed::Invalid(why) => {
                notes.push((
                    origin.clone(),
                    format!("ignoring invalid value '{text}' for option '{key}' in [{section}] ({why})"),
                ));
                self.rejected.push(Rejected { key, section: section.to_string(), origin, why });
                Attempt::Skipped
            }
            Parsed::Unset => Attempt::Skipped,
        }
    }

    /// Resolves one option of the table.
    pub fn resolve<T: OptType + Default>(&mut self, key: &'static str) -> T {
        let Some(spec) = spec(key) else {
            return T::default();
        };
        let mut notes: Vec<(Origin, String)> = Vec::new();
        let section = self.section;
        // `disabled` is Barman's own state, never read from the file.
        let fixed = key == "disabled";
        let mut found = match if fixed { Attempt::Skipped } else { self.attempt::<T>(section, key, &mut notes) } {
            Attempt::Found(v) => Some((v, "")),
            Attempt::Skipped => None,
        };
        if found.is_none()
            && !fixed
            && self.inherit
            && spec.scope == Scope::Inherited
            && section != "barman"
            && let Attempt::Found(v) = self.attempt::<T>("barman", key, &mut notes)
        {
            found = Some((v, "the value from [barman]"));
        }
        if found.is_none()
            && self.inherit
            && let Some(d) = spec.default
        {
            let text = self.expand_default(d);
            // A default built from an unset option reads "None": unset, as in Barman.
            let text = if text == "None" { String::new() } else { text };
            if let Parsed::Set(v) | Parsed::Adjusted(v, _) = T::parse(&text) {
                found = Some((v, "the default"));
            }
        }
        let (value, from) = match found {
            Some((v, from)) => (v, Some(from)),
            None => (T::default(), None),
        };
        if !notes.is_empty() {
            let shown = value.show();
            let fallback = match from {
                Some(from) if !from.is_empty() => format!("using {from} '{shown}'"),
                Some(_) => format!("using '{shown}'"),
                None => "leaving it unset".to_string(),
            };
            for (origin, msg) in notes {
                self.warnings.push(ConfigWarning::at(&origin, format!("{msg}; {fallback}")));
            }
        }
        self.computed.insert(key, value.show());
        value
    }

    /// For models: only what the section itself sets.
    pub fn resolve_only_set<T: OptType>(&mut self, key: &'static str) -> Option<T> {
        let mut notes = Vec::new();
        let section = self.section;
        let out = match self.attempt::<T>(section, key, &mut notes) {
            Attempt::Found(v) => Some(v),
            Attempt::Skipped => None,
        };
        for (origin, msg) in notes {
            self.warnings.push(ConfigWarning::at(&origin, format!("{msg}; the model leaves it unchanged")));
        }
        out
    }

    /// Expands `%(name)s` in a default with what is resolved so far (Python's `%`
    /// formatting of Barman's DEFAULTS).
    fn expand_default(&self, template: &str) -> String {
        let lookup = |name: &str| -> Option<String> {
            self.computed.get(name).cloned().or_else(|| self.builtin(name)).map(|v| v.replace('%', "%%"))
        };
        interpolate("default", template, &lookup, 0).unwrap_or_else(|_| template.to_string())
    }
}
