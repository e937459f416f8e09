//! Field tables and arrays checked on the raw bytes before `amq-protocol`'s recursive parser
//! sees them. That parser recurses once per nesting level with no limit, so a 9 KB table
//! nested 2,000 deep overflows a worker's stack and aborts the process; and every value it
//! builds costs far more memory than its wire form (a 1-byte void becomes a 32-byte
//! `AMQPValue`). This walker is bounded by `FIELD_TABLE_DEPTH_MAX` *before* it recurses, and it
//! counts values so that callers can charge a decoded table's real footprint.
//!
//! It also locates the tables inside the methods and content headers that carry them, so
//! every decoding path (handshake, method arguments, content headers, stored records) checks
//! them the same way.

use crate::error::ProtocolError;

/// Deepest nesting of tables and arrays accepted (the outermost table is level 1). RabbitMQ's
/// own headers nest three deep (`x-death`: table → array → table).
pub const FIELD_TABLE_DEPTH_MAX: usize = 32;

/// Memory one decoded field value costs beyond its wire bytes: the `AMQPValue` itself plus
/// a table entry's key and tree-node share. An estimate, used for accounting only.
pub const DECODED_VALUE_BYTES: usize = 64;

/// What the walker found in a well-formed table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableShape {
    /// Values (and table entries) at every level.
    pub values: usize,
    /// Deepest nesting level reached (1 for a flat table, 0 for none).
    pub depth: usize,
}

impl TableShape {
    /// Estimated bytes the decoded form occupies in memory.
    pub fn decoded_bytes(&self) -> usize {
        self.values.saturating_mul(DECODED_VALUE_BYTES)
    }

    fn merge(&mut self, other: TableShape) {
        self.values = self.values.saturating_add(other.values);
        self.depth = self.depth.max(other.depth);
    }
}

/// Why a table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    TooDeep,
    Truncated,
    UnknownType(u8),
    KeyNotUtf8,
}

impl TableError {
    pub fn to_protocol_error(self, what: &str) -> ProtocolError {
        match self {
            TableError::TooDeep => ProtocolError::frame_error(format!(
                "{what}: field tables and arrays nested deeper than {FIELD_TABLE_DEPTH_MAX} levels"
            )),
            TableError::Truncated => {
                ProtocolError::frame_error(format!("{what}: malformed or truncated field table"))
            }
            TableError::KeyNotUtf8 => {
                ProtocolError::frame_error(format!("{what}: field table key is not UTF-8"))
            }
            TableError::UnknownType(t) => ProtocolError::frame_error(format!(
                "{what}: unknown field type {:?} in field table",
                t as char
            )),
        }
    }
}

/// A cursor over raw bytes that never reads past the end.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TableError> {
        let end = self.at.checked_add(n).ok_or(TableError::Truncated)?;
        let s = self.buf.get(self.at..end).ok_or(TableError::Truncated)?;
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, TableError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, TableError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<usize, TableError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn short_str(&mut self) -> Result<(), TableError> {
        let n = self.u8()? as usize;
        self.take(n).map(|_| ())
    }

    /// A table key: a short string that `amq-protocol` decodes only if it is UTF-8.
    fn key(&mut self) -> Result<(), TableError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| TableError::KeyNotUtf8)?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.at >= self.buf.len()
    }
}

/// Checks one encoded field table (its 4-byte length first) at the front of `buf`; returns
/// its shape and the bytes it occupied.
pub fn check_table(buf: &[u8]) -> Result<(TableShape, usize), TableError> {
    let mut r = Reader { buf, at: 0 };
    let shape = table(&mut r, 1)?;
    Ok((shape, r.at))
}

fn table(r: &mut Reader<'_>, depth: usize) -> Result<TableShape, TableError> {
    if depth > FIELD_TABLE_DEPTH_MAX {
        return Err(TableError::TooDeep);
    }
    let len = r.u32()?;
    let mut inner = Reader {
        buf: r.take(len)?,
        at: 0,
    };
    let mut shape = TableShape { values: 0, depth };
    while !inner.done() {
        inner.key()?;
        shape.merge(value(&mut inner, depth)?);
    }
    Ok(shape)
}

fn array(r: &mut Reader<'_>, depth: usize) -> Result<TableShape, TableError> {
    if depth > FIELD_TABLE_DEPTH_MAX {
        return Err(TableError::TooDeep);
    }
    let len = r.u32()?;
    let mut inner = Reader {
        buf: r.take(len)?,
        at: 0,
    };
    let mut shape = TableShape { values: 0, depth };
    while !inner.done() {
        shape.merge(value(&mut inner, depth)?);
    }
    Ok(shape)
}

/// One typed value inside a table or array at `depth`. The type letters are the ones
/// `amq-protocol` (and RabbitMQ) accept.
fn value(r: &mut Reader<'_>, depth: usize) -> Result<TableShape, TableError> {
    let kind = r.u8()?;
    let fixed = match kind {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'S' | b'x' => {
            let n = r.u32()?;
            r.take(n)?;
            0
        }
        b'A' => {
            let mut shape = array(r, depth + 1)?;
            shape.values = shape.values.saturating_add(1);
            return Ok(shape);
        }
        b'F' => {
            let mut shape = table(r, depth + 1)?;
            shape.values = shape.values.saturating_add(1);
            return Ok(shape);
        }
        other => return Err(TableError::UnknownType(other)),
    };
    r.take(fixed)?;
    Ok(TableShape { values: 1, depth })
}

/// Where the field table sits in a method's arguments: the number of short strings and
/// whether a bit octet come between the class/method ids (+ a reserved short, where the
/// method has one) and the table. `None` for methods without a table.
fn table_position(class_id: u16, method_id: u16) -> Option<TablePosition> {
    let (reserved_short, short_strings, bits) = match (class_id, method_id) {
        // connection.start-ok: the client-properties table comes first.
        (10, 11) => (false, 0, false),
        // exchange.declare: exchange, type, bits.
        (40, 10) => (true, 2, true),
        // exchange.bind / unbind: destination, source, routing-key, no-wait.
        (40, 30) | (40, 40) => (true, 3, true),
        // queue.declare: queue, bits.
        (50, 10) => (true, 1, true),
        // queue.bind: queue, exchange, routing-key, no-wait.
        (50, 20) => (true, 3, true),
        // queue.unbind: queue, exchange, routing-key (no no-wait).
        (50, 50) => (true, 3, false),
        // basic.consume: queue, consumer-tag, bits.
        (60, 20) => (true, 2, true),
        _ => return None,
    };
    Some(TablePosition {
        reserved_short,
        short_strings,
        bits,
    })
}

struct TablePosition {
    reserved_short: bool,
    short_strings: usize,
    bits: bool,
}

/// Checks the field table in a method frame's payload, if the method has one. A payload too
/// short to reach its table is left to the method parser, which reports it.
pub fn check_method_tables(payload: &[u8]) -> Result<TableShape, TableError> {
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    let (Ok(class_id), Ok(method_id)) = (r.u16(), r.u16()) else {
        return Ok(TableShape::default());
    };
    let Some(pos) = table_position(class_id, method_id) else {
        return Ok(TableShape::default());
    };
    let skip = |r: &mut Reader<'_>| -> Result<(), TableError> {
        if pos.reserved_short {
            r.u16()?;
        }
        for _ in 0..pos.short_strings {
            r.short_str()?;
        }
        if pos.bits {
            r.u8()?;
        }
        Ok(())
    };
    if skip(&mut r).is_err() {
        return Ok(TableShape::default());
    }
    table(&mut r, 1)
}

/// Property flag of the basic class's `headers` (a field table); `content-type` and
/// `content-encoding` (short strings) come before it.
const FLAG_CONTENT_TYPE: u16 = 1 << 15;
const FLAG_CONTENT_ENCODING: u16 = 1 << 14;
const FLAG_HEADERS: u16 = 1 << 13;
const FLAG_CONTINUATION: u16 = 1;

/// Checks the `headers` table of a content header frame's payload (class, weight, body size,
/// property flags, property list).
pub fn check_header_tables(payload: &[u8]) -> Result<TableShape, TableError> {
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    r.take(2 + 2 + 8)?;
    let flags = r.u16()?;
    let mut more = flags;
    while more & FLAG_CONTINUATION != 0 {
        more = r.u16()?;
    }
    if flags & FLAG_CONTENT_TYPE != 0 {
        r.short_str()?;
    }
    if flags & FLAG_CONTENT_ENCODING != 0 {
        r.short_str()?;
    }
    if flags & FLAG_HEADERS == 0 {
        return Ok(TableShape::default());
    }
    table(&mut r, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table holding one array nesting `levels` arrays deep.
    fn nested(levels: usize) -> Vec<u8> {
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..levels {
            let mut next = vec![b'A'];
            next.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            next.extend_from_slice(&inner);
            inner = next;
        }
        let mut entry = vec![1, b'k'];
        entry.extend_from_slice(&inner);
        let mut out = (entry.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&entry);
        out
    }

    #[test]
    fn depth_is_bounded_before_recursion() {
        assert!(check_table(&nested(FIELD_TABLE_DEPTH_MAX - 1)).is_ok());
        assert_eq!(
            check_table(&nested(FIELD_TABLE_DEPTH_MAX)).unwrap_err(),
            TableError::TooDeep
        );
        // Deep enough to overflow any stack if the walker recursed first.
        assert_eq!(
            check_table(&nested(100_000)).unwrap_err(),
            TableError::TooDeep
        );
    }

    #[test]
    fn counts_values_and_rejects_garbage() {
        let table = [0, 0, 0, 9, 1, b'a', b'V', 1, b'b', b't', 1, 1, b'c'];
        // The last entry has a key but no value.
        assert_eq!(check_table(&table).unwrap_err(), TableError::Truncated);
        let table = [0, 0, 0, 6, 1, b'a', b'V', 1, b'b', b'?'];
        assert_eq!(
            check_table(&table).unwrap_err(),
            TableError::UnknownType(b'?')
        );
        // Found by the `table` fuzz target: the parser refuses keys that are not UTF-8.
        let table = [0, 0, 0, 3, 1, 0xab, b'V'];
        assert_eq!(check_table(&table).unwrap_err(), TableError::KeyNotUtf8);
        let table = [0, 0, 0, 7, 1, b'a', b'V', 1, b'b', b't', 1];
        let (shape, used) = check_table(&table).unwrap();
        assert_eq!((shape.values, shape.depth, used), (2, 1, 11));
    }
}
