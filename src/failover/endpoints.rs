//! The endpoint list: `tcp://10.0.0.1:9999,tcp://10.0.0.2:9999`.
//!
//! One syntax everywhere a broker is named (`worker/broker/endpoint`,
//! `gateway/broker/endpoint`, `-e` of every tool): endpoints separated by
//! commas, spaces around them ignored, in priority order. A single
//! endpoint is a list of one, so every existing configuration keeps its
//! meaning.

/// Why an endpoint list is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointListError {
    /// Nothing but commas and spaces.
    #[error("no endpoint given")]
    Empty,
    /// `a,,b` or a trailing comma: most likely a typo, never meant.
    #[error("endpoint {position} of the list is empty")]
    EmptyItem {
        /// 1-based position in the list.
        position: usize,
    },
    /// Not `transport://address`.
    #[error("{0:?} is not an endpoint (transport://address, e.g. tcp://10.0.0.5:9999)")]
    NotAnEndpoint(String),
    /// The same broker twice: a worker would offer twice on it, a producer
    /// would count it as two.
    #[error("{0:?} is listed twice")]
    Duplicate(String),
}

/// Parses a comma-separated endpoint list, in the order given (the
/// priority order for failover). Each endpoint must be
/// `transport://address`; whether ZeroMQ can connect to it is found out
/// when it does.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, EndpointListError> {
    if list.split(',').all(|e| e.trim().is_empty()) {
        return Err(EndpointListError::Empty);
    }
    let mut out: Vec<String> = Vec::new();
    for (i, item) in list.split(',').enumerate() {
        let e = item.trim();
        if e.is_empty() {
            return Err(EndpointListError::EmptyItem { position: i + 1 });
        }
        let ok = e.split_once("://").is_some_and(|(t, a)| {
            !t.is_empty() && !a.is_empty() && !e.contains(char::is_whitespace)
        });
        if !ok {
            return Err(EndpointListError::NotAnEndpoint(e.into()));
        }
        if out.iter().any(|o| o == e) {
            return Err(EndpointListError::Duplicate(e.into()));
        }
        out.push(e.into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_endpoint_is_a_list_of_one() {
        assert_eq!(
            parse_endpoints("tcp://127.0.0.1:9999").unwrap(),
            ["tcp://127.0.0.1:9999"]
        );
    }

    #[test]
    fn several_in_the_order_given_spaces_ignored() {
        assert_eq!(
            parse_endpoints(" tcp://10.0.0.2:9999 ,tcp://10.0.0.1:9999,  ipc:///run/mlm ").unwrap(),
            [
                "tcp://10.0.0.2:9999",
                "tcp://10.0.0.1:9999",
                "ipc:///run/mlm"
            ]
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse_endpoints(""), Err(EndpointListError::Empty));
        assert_eq!(parse_endpoints(" , "), Err(EndpointListError::Empty));
        assert_eq!(
            parse_endpoints("tcp://a:1,,tcp://b:1"),
            Err(EndpointListError::EmptyItem { position: 2 })
        );
        assert_eq!(
            parse_endpoints("tcp://a:1,"),
            Err(EndpointListError::EmptyItem { position: 2 })
        );
        assert_eq!(
            parse_endpoints("tcp://a:1,10.0.0.1:9999"),
            Err(EndpointListError::NotAnEndpoint("10.0.0.1:9999".into()))
        );
        assert_eq!(
            parse_endpoints("tcp://"),
            Err(EndpointListError::NotAnEndpoint("tcp://".into()))
        );
        assert_eq!(
            parse_endpoints("tcp://a:1 tcp://b:1"),
            Err(EndpointListError::NotAnEndpoint(
                "tcp://a:1 tcp://b:1".into()
            ))
        );
        assert_eq!(
            parse_endpoints("tcp://a:1, tcp://a:1"),
            Err(EndpointListError::Duplicate("tcp://a:1".into()))
        );
    }
}
