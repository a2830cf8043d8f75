//! The connection to the coordinator's Admin service: one gRPC channel (over TLS for an
//! `https://` coordinator, with `settle_security`'s client TLS), and requests that carry
//! the admin token (`authorization: Bearer …`) and the operator's name (`x-settle-actor`)
//! under the keys `settle_proto::metadata` fixes for both sides.
//!
//! It does not know any subcommand or check any rule: it connects, and dresses requests.
//! Whether the token is right, and what the actor may do, is the coordinator's to say.

use std::time::Duration;

use settle_proto::{metadata, v1::admin_client::AdminClient};
use settle_security::{ClientTls, connect::Target};
use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::Channel,
};

use crate::error::{Error, error_chain};

/// An Admin client that sends the token and the actor with every call.
pub struct Client {
    pub admin: AdminClient<Channel>,
    authorization: Option<AsciiMetadataValue>,
    actor: Option<AsciiMetadataValue>,
}

impl Client {
    /// Connects to `coordinator`, over `tls` when it is `https://`. A token or actor that
    /// cannot travel as metadata is a usage error, found before connecting.
    pub async fn connect(
        coordinator: &str,
        tls: Option<&ClientTls>,
        token: Option<&str>,
        actor: Option<String>,
    ) -> Result<Client, Error> {
        let authorization = match token {
            Some(token) => Some(
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| Error::Usage("the token must be printable ASCII".to_owned()))?,
            ),
            None => None,
        };
        let actor =
            match actor {
                Some(actor) => Some(MetadataValue::try_from(actor.as_str()).map_err(|_| {
                    Error::Usage(format!("actor {actor:?} must be printable ASCII"))
                })?),
                None => None,
            };
        let target = Target::new(coordinator, tls)
            .map_err(|error| Error::Usage(format!("--coordinator: {error}")))?
            .configure(|endpoint| {
                endpoint
                    .connect_timeout(Duration::from_secs(5))
                    // Longer than the longest wait a command may ask the coordinator for.
                    .timeout(Duration::from_secs(90))
            });
        let channel = target.connect().await.map_err(|error| Error::Unreachable {
            url: coordinator.to_owned(),
            reason: error_chain(&error),
        })?;
        Ok(Client {
            // Show carries branch payloads, up to 64 branches of 64 KiB by default.
            admin: AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
            authorization,
            actor,
        })
    }

    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Some(authorization) = &self.authorization {
            metadata.insert(metadata::AUTHORIZATION, authorization.clone());
        }
        if let Some(actor) = &self.actor {
            metadata.insert(metadata::ACTOR, actor.clone());
        }
        request
    }
}
