//! Why a volume could not start: a kind that callers act on and a sentence the
//! user reads. `s3vol mount` prints the sentence; the daemon hands both to the
//! process waiting on it (as a report: the kind's word on the first line, the
//! sentence after it), and the CSI driver answers gRPC by the kind.

/// What stopped a volume, as far as a caller acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The credentials were refused (by S3, by STS, or as expired), or there
    /// were none: a policy, a trust policy or an external ID to fix.
    Denied,
    /// The bucket or the prefix does not exist.
    NotFound,
    /// An endpoint (S3, STS, KMS) could not be reached.
    Unreachable,
    /// Anything else: an option, a local directory, the mount itself.
    Other,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Denied, Kind::NotFound, Kind::Unreachable, Kind::Other];

    fn word(self) -> &'static str {
        match self {
            Kind::Denied => "denied",
            Kind::NotFound => "not-found",
            Kind::Unreachable => "unreachable",
            Kind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    pub kind: Kind,
    pub message: String,
}

impl StartError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        StartError {
            kind,
            message: message.into(),
        }
    }

    pub fn other(message: impl Into<String>) -> Self {
        StartError::new(Kind::Other, message)
    }

    /// The report the waiting process reads (see [`StartError::from_report`]).
    pub fn report(&self) -> String {
        format!("{}\n{}", self.kind.word(), self.message)
    }

    /// The error a report tells; a text without a kind is of kind Other.
    pub fn from_report(text: &str) -> StartError {
        let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
        match Kind::ALL.into_iter().find(|kind| kind.word() == first) {
            Some(kind) => StartError::new(kind, rest.trim()),
            None => StartError::other(text.trim()),
        }
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::other(e.to_string())
    }
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        StartError::other(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_tells_the_kind_and_the_sentence() {
        for kind in Kind::ALL {
            let error = StartError::new(kind, "what went wrong.\nAnd what to do.");
            assert_eq!(StartError::from_report(&error.report()), error);
        }
        assert_eq!(
            StartError::from_report("a daemon's plain words"),
            StartError::other("a daemon's plain words")
        );
    }
}
