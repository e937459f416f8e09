//! Direct reply-to on the channel side: consuming from `amq.rabbitmq.reply-to`, publishing
//! with `reply_to = amq.rabbitmq.reply-to` (rewritten to the channel's own name), and
//! publishing a reply to such a name (delivered straight to the waiting channel).
//! Error texts are RabbitMQ's.

use warren_core::direct_reply::{REPLY_TO, REPLY_TO_PREFIX};
use warren_core::Message;
use warren_protocol::content::ContentHeader;
use warren_protocol::{basic, encode, ProtocolError, ShortString};

use crate::connection::Connection;
use crate::definitions::generated_name;

impl Connection {
    /// basic.consume on `amq.rabbitmq.reply-to`.
    pub(crate) fn consume_reply_to(
        &mut self,
        ch: u16,
        m: basic::Consume,
    ) -> Result<(), ProtocolError> {
        if !m.no_ack {
            return Err(ProtocolError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        let vhost = self.vhost();
        let events = self.events_tx.clone();
        let c = self
            .channels
            .get_mut(&ch)
            .ok_or_else(|| ProtocolError::channel_error("channel is not open"))?;
        if c.reply_consumer.is_some() {
            return Err(ProtocolError::precondition_failed(
                "reply consumer already set",
            ));
        }
        let tag = if m.consumer_tag.as_str().is_empty() {
            generated_name("amq.ctag-")
        } else {
            m.consumer_tag
        };
        let name = ShortString::from(format!("{REPLY_TO_PREFIX}{}", generated_name("").as_str()));
        c.reply_consumer = Some(
            vhost
                .direct_replies
                .register(name, events, c.key, tag.clone()),
        );
        self.consume_ok(ch, tag, m.nowait);
        Ok(())
    }

    /// basic.cancel of the reply consumer; true if it was one.
    pub(crate) fn cancel_reply_to(&mut self, ch: u16, tag: &ShortString) -> bool {
        match self.channels.get_mut(&ch) {
            Some(c)
                if c.reply_consumer
                    .as_ref()
                    .is_some_and(|r| &r.consumer_tag == tag) =>
            {
                c.reply_consumer = None;
                true
            }
            _ => false,
        }
    }

    /// A request published with `reply_to = amq.rabbitmq.reply-to` gets the channel's name.
    pub(crate) fn rewrite_reply_to(
        &self,
        ch: u16,
        header: ContentHeader,
    ) -> Result<ContentHeader, ProtocolError> {
        if header.properties.reply_to().as_ref().map(|r| r.as_str()) != Some(REPLY_TO) {
            return Ok(header);
        }
        let name = self
            .channels
            .get(&ch)
            .and_then(|c| c.reply_consumer.as_ref())
            .map(|r| r.name.clone())
            .ok_or_else(|| {
                ProtocolError::precondition_failed("fast reply consumer does not exist")
            })?;
        let properties = Box::new((*header.properties).with_reply_to(name));
        let raw = encode::header_payload(&properties, header.body_size);
        Ok(ContentHeader {
            body_size: header.body_size,
            properties,
            raw,
            decoded_bytes: header.decoded_bytes,
        })
    }

    /// A reply to a direct reply-to name; false if no channel holds the name.
    pub(crate) fn deliver_reply(&self, message: &std::sync::Arc<Message>) -> bool {
        let name = message.routing_key.as_str();
        name.starts_with(REPLY_TO_PREFIX)
            && self.vhost().direct_replies.deliver(name, message.clone())
    }

    /// Writes a direct reply as a delivery (nothing to ack).
    pub(crate) fn write_reply(&mut self, ch: u16, consumer_tag: &str, message: &Message) {
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        let tag = c.next_tag;
        c.next_tag += 1;
        let event = warren_core::connections::MessageEvent::DeliveredNoAck;
        c.counts[event as usize] += 1;
        self.metrics.count(event, 1);
        encode::deliver(
            &mut self.out,
            ch,
            consumer_tag,
            tag,
            false,
            message.exchange.as_str(),
            message.routing_key.as_str(),
        );
        encode::content_header_raw(&mut self.out, ch, &message.header_raw);
        encode::body(&mut self.out, ch, &message.body, self.frame_max);
    }
}

/// RabbitMQ's check of the `expiration` property: a non-negative integer, in text.
pub(crate) fn check_expiration(expiration: &str) -> Result<(), ProtocolError> {
    let digits_end = expiration
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
        .map(|(i, _)| i)
        .unwrap_or(expiration.len());
    let (number, rest) = expiration.split_at(digits_end);
    let detail = match number.parse::<i64>() {
        Err(_) => "no_integer".to_owned(),
        Ok(_) if !rest.is_empty() => format!("{{leftover_string,\"{rest}\"}}"),
        Ok(v) if v < 0 => format!("{{value_negative,{v}}}"),
        Ok(v) if v > warren_core::queue::settings::TTL_MS_MAX => format!("{{value_too_large,{v}}}"),
        Ok(_) => return Ok(()),
    };
    Err(ProtocolError::precondition_failed(format!(
        "invalid expiration '{expiration}': {detail}"
    )))
}

#[cfg(test)]
mod tests {
    use super::check_expiration;

    /// Texts as RabbitMQ 3.10 sends them.
    #[test]
    fn expiration_texts_match_rabbitmq() {
        let text = |e: &str| check_expiration(e).unwrap_err().reply_text();
        assert_eq!(
            text("abc"),
            "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
        );
        assert_eq!(
            text("-5"),
            "PRECONDITION_FAILED - invalid expiration '-5': {value_negative,-5}"
        );
        assert_eq!(
            text("1.5"),
            "PRECONDITION_FAILED - invalid expiration '1.5': {leftover_string,\".5\"}"
        );
        assert_eq!(
            text(""),
            "PRECONDITION_FAILED - invalid expiration '': no_integer"
        );
        assert_eq!(
            text("315360000001"),
            "PRECONDITION_FAILED - invalid expiration '315360000001': {value_too_large,315360000001}"
        );
        assert!(check_expiration("315360000000").is_ok());
        assert!(check_expiration("0").is_ok());
        assert!(check_expiration("60000").is_ok());
    }
}
