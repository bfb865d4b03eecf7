//! The one line a Siesta server prints on stdout once it listens, so that whoever started it (the
//! local backend, scripts, tests) learns its ports: `siesta listening http=ADDR grpc=ADDR|off`.
//! Printed and parsed only here.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub http: SocketAddr,
    /// `None`: no gRPC port (`grpc=off`: transformers, `--no-grpc`).
    pub grpc: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a listening line ({reason}): {line:?}")]
pub struct ListeningLineError {
    pub line: String,
    pub reason: &'static str,
}

const PREFIX: &str = "siesta listening ";

impl fmt::Display for Listening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}http={} grpc=", self.http)?;
        match self.grpc {
            Some(g) => write!(f, "{g}"),
            None => f.write_str("off"),
        }
    }
}

impl Listening {
    /// Prints the line and flushes, so a reader of a pipe sees it at once.
    pub fn announce(&self) {
        use std::io::Write;
        println!("{self}");
        let _ = std::io::stdout().flush();
    }
}

impl FromStr for Listening {
    type Err = ListeningLineError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ListeningLineError {
            line: line.to_string(),
            reason,
        };
        let rest = line
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| fail("no `siesta listening` prefix"))?;
        let field = |key: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(key));
        let http = field("http=")
            .ok_or_else(|| fail("no http="))?
            .parse()
            .map_err(|_| fail("http= is not an address"))?;
        let grpc = match field("grpc=").ok_or_else(|| fail("no grpc="))? {
            "off" => None,
            g => Some(
                g.parse()
                    .map_err(|_| fail("grpc= is neither an address nor off"))?,
            ),
        };
        Ok(Listening { http, grpc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_grpc() {
        for l in [
            Listening {
                http: "127.0.0.1:8080".parse().unwrap(),
                grpc: Some("127.0.0.1:8081".parse().unwrap()),
            },
            Listening {
                http: "[::1]:9".parse().unwrap(),
                grpc: None,
            },
        ] {
            assert_eq!(l.to_string().parse::<Listening>(), Ok(l));
        }
        assert_eq!(
            Listening {
                http: "127.0.0.1:1".parse().unwrap(),
                grpc: None
            }
            .to_string(),
            "siesta listening http=127.0.0.1:1 grpc=off"
        );
    }

    #[test]
    fn anything_else_is_an_error_that_quotes_the_line() {
        for (line, reason) in [
            ("", "no `siesta listening` prefix"),
            ("error: model not found", "no `siesta listening` prefix"),
            ("siesta listening grpc=off", "no http="),
            (
                "siesta listening http=nowhere grpc=off",
                "http= is not an address",
            ),
            ("siesta listening http=127.0.0.1:1", "no grpc="),
            (
                "siesta listening http=127.0.0.1:1 grpc=on",
                "grpc= is neither an address nor off",
            ),
        ] {
            let e = line.parse::<Listening>().unwrap_err();
            assert_eq!(e.reason, reason, "{line:?}");
            assert!(e.to_string().contains(&format!("{line:?}")));
        }
    }
}
