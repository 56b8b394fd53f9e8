//! The client's response from what the waifu answered (or did not): its
//! head cleaned, or the proxy's own error, or a WebSocket tunnel opened.

use super::*;

impl Proxy {
    /// The client's response to what the waifu answered (or did not).
    pub(super) fn relay(
        &self,
        answer: Attempt,
        busy: Arc<Busy>,
        upgrade: Option<Switch>,
        served: &Served,
    ) -> Result<Answered<ProxyBody>, ProxyError> {
        let instance = busy.instance();
        let answer = match answer {
            Err(_) | Ok(Err(SendError::ConnectTimeout)) => return Err(ProxyError::Timeout),
            // The client's body broke off or broke its framing: the
            // exchange with the waifu is dropped (its connection closed)
            // and this is the request's only answer.
            Ok(Err(SendError::RequestBody(e))) => {
                debug!(error = %e, "the request body failed");
                return Err(ProxyError::BadBody);
            }
            Ok(Err(SendError::BodyTooLarge)) => return Err(ProxyError::BodyTooLarge),
            Ok(Err(e)) => {
                self.unreachable(instance, &e, served);
                debug!(instance = %instance.upstream, error = %e, "upstream failed");
                return Err(ProxyError::Upstream);
            }
            Ok(Ok(answer)) => answer,
        };
        match answer {
            Answer::Response(Reply {
                status,
                mut fields,
                body,
            }) => {
                headers::strip_hop_by_hop_fields(&mut fields);
                let mut response = Response::new(Either::Left(body));
                *response.status_mut() = status;
                Ok(Answered {
                    response,
                    waifu: Some(fields),
                })
            }
            Answer::Switched {
                response,
                io,
                early,
            } => {
                let switch = upgrade.ok_or(ProxyError::Upstream)?;
                if !switch.key.is_accepted_by(response.headers()) {
                    // Not the handshake we forwarded: its server may still
                    // be reading HTTP, so nothing is relayed, and `io` is
                    // closed here.
                    debug!(instance = %instance.upstream, "a 101 that does not complete the WebSocket handshake");
                    return Err(ProxyError::Upstream);
                }
                if let Some(switched) = &switch.switched {
                    switched.store(true, Ordering::Release);
                }
                let (mut rparts, ()) = response.into_parts();
                headers::strip_hop_by_hop(&mut rparts.headers, true);
                websocket::tunnel(
                    &self.tunnels,
                    &self.hard_stop,
                    switch.client,
                    io,
                    early,
                    busy,
                );
                let empty = Either::Right(Full::new(Bytes::new()));
                Ok(Answered::own(Response::from_parts(rparts, empty)))
            }
        }
    }
}
