//! What an adapter declares about itself, and the options users pass it.

use std::fmt;
use std::str::FromStr;

/// One option an adapter accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionInfo {
    /// Name as the user writes it (`--option name=value`).
    pub name: String,
    /// What the option does, its accepted values and their meaning.
    pub description: String,
    /// Value used when the option is not given.
    pub default: Option<String>,
}

impl OptionInfo {
    /// An option with a default value.
    pub fn new(name: &str, default: Option<&str>, description: &str) -> Self {
        OptionInfo {
            name: name.to_owned(),
            description: description.to_owned(),
            default: default.map(str::to_owned),
        }
    }
}

/// What an adapter is and what it handles; returned by
/// [`Adapter::describe`](crate::Adapter::describe).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdapterInfo {
    /// Short unique kebab-case name (`csv`).
    pub name: String,
    /// Adapter version, semver.
    pub version: String,
    /// One line describing the adapter.
    pub description: String,
    /// Format names users pass as `--format`.
    pub formats: Vec<String>,
    /// File extensions, without the dot, that select this adapter.
    pub extensions: Vec<String>,
    /// Media types that select this adapter.
    pub media_types: Vec<String>,
    /// Options accepted by [`Adapter::open`](crate::Adapter::open).
    pub options: Vec<OptionInfo>,
    /// Whether [`Adapter::checkpoint`](crate::Adapter::checkpoint) returns
    /// checkpoints.
    pub resumable: bool,
}

/// Why a parser could not be opened: an unknown option or a bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The option at fault, if one is.
    pub option: Option<String>,
    /// What is wrong and what to pass instead.
    pub message: String,
}

impl ConfigError {
    /// An error about option `option`.
    pub fn option(option: &str, message: impl Into<String>) -> Self {
        ConfigError {
            option: Some(option.to_owned()),
            message: message.into(),
        }
    }

    /// An error not tied to one option.
    pub fn other(message: impl Into<String>) -> Self {
        ConfigError {
            option: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.option {
            Some(o) => write!(f, "option {o:?}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The options of one parse: what the user passed, over the defaults the
/// adapter declared.
///
/// The SDK checks them against [`AdapterInfo::options`] before
/// [`Adapter::open`](crate::Adapter::open) runs: unknown and repeated names
/// are refused with a message listing what the adapter accepts.
#[derive(Debug, Clone)]
pub struct Options {
    given: Vec<(String, String)>,
    declared: Vec<OptionInfo>,
}

impl Options {
    /// Check `given` against the declared options.
    pub fn new(given: Vec<(String, String)>, declared: &[OptionInfo]) -> Result<Self, ConfigError> {
        for (i, (name, _)) in given.iter().enumerate() {
            if !declared.iter().any(|o| &o.name == name) {
                let known: Vec<&str> = declared.iter().map(|o| o.name.as_str()).collect();
                return Err(ConfigError::option(
                    name,
                    if known.is_empty() {
                        "unknown option; this adapter takes no options".to_owned()
                    } else {
                        format!("unknown option; this adapter accepts: {}", known.join(", "))
                    },
                ));
            }
            if given[..i].iter().any(|(n, _)| n == name) {
                return Err(ConfigError::option(
                    name,
                    "given more than once; pass it once",
                ));
            }
        }
        Ok(Options {
            given,
            declared: declared.to_vec(),
        })
    }

    /// The value the user gave, else the declared default.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.given
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .or_else(|| {
                self.declared
                    .iter()
                    .find(|o| o.name == name)
                    .and_then(|o| o.default.as_deref())
            })
    }

    /// Whether the user gave this option explicitly.
    pub fn is_given(&self, name: &str) -> bool {
        self.given.iter().any(|(n, _)| n == name)
    }

    /// The value parsed with [`FromStr`]; `None` if unset.
    pub fn parse<T: FromStr>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| ConfigError::option(name, format!("invalid value {v:?}: {e}")))
            })
            .transpose()
    }

    /// A count within `range` (a limit, a size); `default` if unset.
    pub fn bounded(
        &self,
        name: &str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let v = self.parse::<usize>(name)?.unwrap_or(default);
        if !range.contains(&v) {
            return Err(ConfigError::option(
                name,
                format!(
                    "must be between {} and {}, got {v}",
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(v)
    }

    /// A boolean: `true`/`false`, `yes`/`no`, `1`/`0`, `on`/`off`.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        self.get(name)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => Ok(true),
                "false" | "no" | "0" | "off" => Ok(false),
                _ => Err(ConfigError::option(
                    name,
                    format!("invalid value {v:?}: use true or false"),
                )),
            })
            .transpose()
    }

    /// A single byte given as one ASCII character, an escape (`\t`, `\0`),
    /// a name (`tab`, `comma`, `semicolon`, `pipe`, `space`, `none`), or
    /// `0xNN`. `none` and the empty string give `None`.
    pub fn byte(&self, name: &str) -> Result<Option<u8>, ConfigError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let b = match v {
            "" | "none" => return Ok(None),
            "\\t" | "tab" => b'\t',
            "\\0" => 0,
            "comma" => b',',
            "semicolon" => b';',
            "pipe" => b'|',
            "space" => b' ',
            s if s.len() == 1 && s.is_ascii() => s.as_bytes()[0],
            s if s.starts_with("0x") && s.len() == 4 => u8::from_str_radix(&s[2..], 16)
                .map_err(|_| ConfigError::option(name, format!("invalid byte {s:?}")))?,
            s => {
                return Err(ConfigError::option(
                    name,
                    format!(
                        "invalid value {s:?}: give one ASCII character, \\t, tab, comma, semicolon, pipe, space, none or 0xNN"
                    ),
                ));
            }
        };
        Ok(Some(b))
    }

    /// The options as given, in order.
    pub fn given(&self) -> &[(String, String)] {
        &self.given
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> Vec<OptionInfo> {
        vec![
            OptionInfo::new("delimiter", Some(","), "field separator"),
            OptionInfo::new("header", Some("true"), "first row names fields"),
        ]
    }

    #[test]
    fn defaults_and_given_values() {
        let o = Options::new(vec![("delimiter".into(), "tab".into())], &declared()).unwrap();
        assert_eq!(o.byte("delimiter").unwrap(), Some(b'\t'));
        assert_eq!(o.flag("header").unwrap(), Some(true));
        assert!(o.is_given("delimiter"));
        assert!(!o.is_given("header"));
    }

    #[test]
    fn unknown_and_repeated_options_are_refused() {
        let e = Options::new(vec![("delim".into(), ";".into())], &declared()).unwrap_err();
        assert_eq!(e.option.as_deref(), Some("delim"));
        assert!(e.message.contains("delimiter, header"), "{e}");
        let e = Options::new(
            vec![
                ("header".into(), "true".into()),
                ("header".into(), "no".into()),
            ],
            &declared(),
        )
        .unwrap_err();
        assert!(e.message.contains("more than once"));
    }

    #[test]
    fn bad_values_name_the_option() {
        let o = Options::new(vec![("header".into(), "maybe".into())], &declared()).unwrap();
        let e = o.flag("header").unwrap_err();
        assert_eq!(
            e.to_string(),
            "option \"header\": invalid value \"maybe\": use true or false"
        );
    }
}
