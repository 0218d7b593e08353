//! Credential swap and response scrubbing.
//!
//! Agents hold placeholders, never secrets. On the way out, [`CredentialSet`]
//! swaps the placeholders of the secrets a rule allows toward its host for the
//! real values, and reports any other placeholder so the request is refused.
//! On the way back, [`Scrubber`] puts placeholders back wherever an upstream
//! echoes a secret, in headers, streamed bodies and trailers.

mod base64_forms;
mod decoded;
mod echo_forms;
mod grant;
mod grpc_scrub;
mod newer_secrets;
mod readable;
mod scrub;
mod sigv4;
mod swap;
mod tokens;

#[cfg(test)]
mod tests;

pub use decoded::{Coding, Decoded, decodable_coding, mark_decoded};
pub use grant::{Grant, GrantProblem, TokenError};
#[cfg(test)]
use grpc_scrub::{COMPRESSED_FLAG, GRPC_MESSAGE_MAX, Hold};
pub use grpc_scrub::{GrpcScrubBody, GrpcScrubError, ask_for_uncompressed_messages, is_grpc};
pub use newer_secrets::{Follow, SecretsSource};
pub use readable::{ask_for_identity, ask_for_whole, unreadable_coding};
pub use scrub::{Across, ScrubBodyError, ScrubStream, Scrubber};
pub use sigv4::{AwsKey, SigV4Error, declared_payload_hash, hex_sha256, resign};
#[cfg(test)]
use swap::is_valid_placeholder;
pub use swap::{Credential, CredentialSet, Resign, SwapError, Swapped};
pub use tokens::{TokenCache, Transport};
