//! The agent's settings from the kernel command line (`capsa.*=` words).

use std::time::Duration;

/// Settings the host passes on the guest kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// vsock port to listen on (`capsa.port=N`).
    pub port: u32,
    /// Power off when no container has been created this long after boot
    /// (`capsa.create_timeout=SECS`, 0 = wait forever).
    pub create_timeout: Option<Duration>,
    /// Log each request on the console (`capsa.debug`).
    pub debug: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            port: capsa_proto::AGENT_PORT,
            create_timeout: Some(Duration::from_secs(120)),
            debug: false,
        }
    }
}

impl Settings {
    /// Parses the text of `/proc/cmdline`. Unknown words are the kernel's;
    /// a malformed `capsa.*` value is an error naming it.
    pub fn parse(cmdline: &str) -> Result<Settings, String> {
        let mut s = Settings::default();
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            let number = |v: &str| -> Result<u64, String> {
                v.parse()
                    .map_err(|_| format!("kernel command line: {key}={v} is not a number"))
            };
            match key {
                "capsa.port" => {
                    s.port = u32::try_from(number(value)?)
                        .map_err(|_| format!("kernel command line: {word}: port out of range"))?
                }
                "capsa.create_timeout" => {
                    let secs = number(value)?;
                    s.create_timeout = (secs > 0).then(|| Duration::from_secs(secs));
                }
                "capsa.debug" => s.debug = value.is_empty() || value == "1",
                _ => {}
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_capsa_words() {
        let s = Settings::parse("console=ttyS0 reboot=k panic=-1 quiet").unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.port, 1024);
    }

    #[test]
    fn reads_capsa_words() {
        let s = Settings::parse("console=ttyS0 capsa.port=2000 capsa.create_timeout=0 capsa.debug")
            .unwrap();
        assert_eq!(s.port, 2000);
        assert_eq!(s.create_timeout, None);
        assert!(s.debug);
        let s = Settings::parse("capsa.create_timeout=5").unwrap();
        assert_eq!(s.create_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn malformed_values_are_errors() {
        let e = Settings::parse("capsa.port=abc").unwrap_err();
        assert!(e.contains("capsa.port=abc"), "{e}");
        assert!(Settings::parse("capsa.port=99999999999").is_err());
    }
}
