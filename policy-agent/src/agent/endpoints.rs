//! What a new endpoint's traffic meets before the agent has programmed it.
//!
//! A pod's interface exists some time before the agent can enforce its policy: the CNI creates
//! the veth, then moves it, addresses it and routes to it, and the agent must also know the Pod.
//! - `allow` (the default): an interface is left alone until its pod is resolved and its
//!   interface found; then the agent writes the endpoint and attaches the programs. Until then the
//!   pod's traffic is not filtered. Netlink notifications make that window the time between the
//!   wiring being complete (the pod's address and the route to it) and the agent's next paced
//!   reconcile (a few milliseconds, at most a second), once the Pod is known.
//! - `deny`: every veth whose name starts with one of the endpoint interface prefixes is held as
//!   soon as the agent sees it: it gets the programs and an endpoint entry flagged not ready,
//!   which drops all its IP traffic (reason `NotReady`), until its pod's endpoint replaces the
//!   entry. A held interface that goes away, or stops matching, is released. What remains open is the time from the veth's creation to the agent's reconcile,
//!   before any address or route exists.

use std::{collections::BTreeSet, fmt, str::FromStr};

/// The interface-name prefix of the pod veths of the common ptp CNIs (kindnet, the ptp plugin).
pub const DEFAULT_INTERFACE_PREFIX: &str = "veth";

/// The start-up mode of new endpoints (`--new-endpoints`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NewEndpoints {
    /// Traffic passes unfiltered until the endpoint is programmed.
    #[default]
    Allow,
    /// Traffic is dropped from the moment the agent sees the interface until it is programmed.
    Deny,
}

/// A `--new-endpoints` value the agent does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown new-endpoint mode `{given}`: expected `allow` or `deny`")]
pub struct NewEndpointsParseError {
    given: String,
}

impl FromStr for NewEndpoints {
    type Err = NewEndpointsParseError;

    fn from_str(text: &str) -> Result<NewEndpoints, NewEndpointsParseError> {
        match text {
            "allow" => Ok(NewEndpoints::Allow),
            "deny" => Ok(NewEndpoints::Deny),
            _ => Err(NewEndpointsParseError {
                given: text.to_owned(),
            }),
        }
    }
}

impl fmt::Display for NewEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NewEndpoints::Allow => "allow",
            NewEndpoints::Deny => "deny",
        })
    }
}

/// How the agent treats interfaces whose pod it does not know yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEndpointPolicy {
    pub mode: NewEndpoints,
    /// Interface-name prefixes of pod veths (Calico's interface prefix works the same way).
    pub interface_prefixes: Vec<String>,
}

impl Default for NewEndpointPolicy {
    fn default() -> Self {
        NewEndpointPolicy {
            mode: NewEndpoints::Allow,
            interface_prefixes: vec![DEFAULT_INTERFACE_PREFIX.to_owned()],
        }
    }
}

impl NewEndpointPolicy {
    /// The interfaces to hold among the node's veths: in deny mode, those whose name
    /// has a prefix and that are no programmed endpoint's.
    pub fn to_hold(&self, veths: &[(u32, String)], endpoints: &BTreeSet<u32>) -> BTreeSet<u32> {
        if self.mode == NewEndpoints::Allow {
            return BTreeSet::new();
        }
        veths
            .iter()
            .filter(|(ifindex, name)| {
                !endpoints.contains(ifindex)
                    && self
                        .interface_prefixes
                        .iter()
                        .any(|prefix| name.starts_with(prefix.as_str()))
            })
            .map(|(ifindex, _)| *ifindex)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veths() -> Vec<(u32, String)> {
        vec![
            (3, "veth1234".into()),
            (4, "vethabcd".into()),
            (5, "eth0".into()),
            (6, "cali99".into()),
        ]
    }

    #[test]
    fn allow_mode_holds_nothing() {
        let policy = NewEndpointPolicy::default();
        assert!(policy.to_hold(&veths(), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn deny_mode_holds_prefixed_veths_that_are_no_endpoint() {
        let policy = NewEndpointPolicy {
            mode: NewEndpoints::Deny,
            interface_prefixes: vec!["veth".into(), "cali".into()],
        };
        assert_eq!(
            policy.to_hold(&veths(), &BTreeSet::from([4])),
            BTreeSet::from([3, 6])
        );
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [NewEndpoints::Allow, NewEndpoints::Deny] {
            assert_eq!(mode.to_string().parse::<NewEndpoints>().ok(), Some(mode));
        }
        let error = "block".parse::<NewEndpoints>().expect_err("unknown mode");
        assert!(error.to_string().contains("block"), "{error}");
    }
}
