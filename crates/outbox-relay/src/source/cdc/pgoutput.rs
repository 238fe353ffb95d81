//! A decoder for PostgreSQL's `pgoutput` logical replication messages (protocol version 1).
//!
//! The replication client hands over the `XLogData` payloads; each is one message:
//!
//! | tag | message | fields |
//! |---|---|---|
//! | `B` | Begin | final (commit) LSN, commit time, xid |
//! | `C` | Commit | flags, commit LSN, end LSN, commit time |
//! | `O` | Origin | origin LSN, name |
//! | `R` | Relation | id, namespace, name, replica identity, columns (flags, name, type OID, modifier) |
//! | `Y` | Type | OID, namespace, name |
//! | `I` | Insert | relation id, `N` + new tuple |
//! | `U` | Update | relation id, optional `K`/`O` + old tuple, `N` + new tuple |
//! | `D` | Delete | relation id, `K`/`O` + old tuple |
//! | `T` | Truncate | relation count, options, relation ids |
//! | `M` | Message | flags, LSN, prefix, content (`pg_logical_emit_message`) |
//!
//! Column values are borrowed from the payload ([`Bytes`] slices), never copied. The decoder
//! never panics on malformed input: every read is bounds-checked and reported as a
//! [`DecodeError`].

use bytes::Bytes;

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

/// One decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq)]
pub enum PgOutput {
    /// Start of a committed transaction.
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction.
    Commit {
        /// Flags (unused, 0).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// End of the commit record: the position to confirm once the transaction is done.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// The transaction came from another origin (replication chains).
    Origin {
        /// The commit LSN on the origin server.
        lsn: u64,
        /// Origin name.
        name: String,
    },
    /// Describes a table; sent before its first change in a session and after a schema change.
    Relation(Relation),
    /// Describes a data type (sent for non-built-in types).
    Type {
        /// Type OID.
        oid: u32,
        /// Schema (empty for `pg_catalog`).
        namespace: String,
        /// Type name.
        name: String,
    },
    /// A row was inserted.
    Insert {
        /// Relation id (see [`Relation::id`]).
        relation: u32,
        /// The new row.
        new: Tuple,
    },
    /// A row was updated.
    Update {
        /// Relation id.
        relation: u32,
        /// The old row or its key, when the replica identity sends it.
        old: Option<Tuple>,
        /// The new row.
        new: Tuple,
    },
    /// A row was deleted.
    Delete {
        /// Relation id.
        relation: u32,
        /// The old row or its key.
        old: Tuple,
    },
    /// Tables were truncated.
    Truncate {
        /// Option bits: 1 = CASCADE, 2 = RESTART IDENTITY.
        options: u8,
        /// Relation ids.
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Emitted inside a transaction.
        transactional: bool,
        /// LSN of the message.
        lsn: u64,
        /// Application-defined prefix.
        prefix: String,
        /// Content.
        content: Bytes,
    },
}

/// A table as `pgoutput` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID, used by the change messages.
    pub id: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting (`d`efault, `n`othing, `f`ull, `i`ndex).
    pub replica_identity: u8,
    /// Columns, in tuple order.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// 1 when the column is part of the key.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// Data type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value (updates only): the value is not sent.
    Unchanged,
    /// The value in text format.
    Text(Bytes),
    /// The value in binary format (only with the `binary` option).
    Binary(Bytes),
}

impl Datum {
    /// The text-format value as UTF-8, `None` for NULL, unchanged or binary values, or text
    /// that is not valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Datum::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// A row: one [`Datum`] per column of its relation.
pub type Tuple = Vec<Datum>;

/// Decodes one `pgoutput` message.
pub fn decode(data: &Bytes) -> Result<PgOutput, DecodeError> {
    let mut r = Reader { data, pos: 0 };
    let tag = r.u8()?;
    let msg = match tag {
        b'B' => PgOutput::Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => PgOutput::Commit {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_time: r.i64()?,
        },
        b'O' => PgOutput::Origin {
            lsn: r.u64()?,
            name: r.string()?,
        },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            if n < 0 {
                return Err(DecodeError(format!("relation {name}: {n} columns")));
            }
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                columns.push(RelationColumn {
                    flags: r.u8()?,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            PgOutput::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => PgOutput::Type {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation = r.u32()?;
            r.expect(b'N', "Insert")?;
            PgOutput::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    r.expect(b'N', "Update")?;
                    Some(old)
                }
                b'N' => None,
                other => {
                    return Err(DecodeError(format!(
                        "Update: unexpected tuple marker {:?}",
                        other as char
                    )))
                }
            };
            PgOutput::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => {}
                other => {
                    return Err(DecodeError(format!(
                        "Delete: unexpected tuple marker {:?}",
                        other as char
                    )))
                }
            }
            PgOutput::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let options = r.u8()?;
            if n as usize > r.remaining() / 4 {
                return Err(DecodeError(format!("Truncate: {n} relations announced")));
            }
            let mut relations = Vec::with_capacity(n as usize);
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            PgOutput::Truncate { options, relations }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.string()?;
            let len = r.u32()? as usize;
            let content = r.bytes(len)?;
            PgOutput::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            }
        }
        other => {
            return Err(DecodeError(format!(
                "unknown message type {:?} (0x{other:02x})",
                other as char
            )))
        }
    };
    Ok(msg)
}

struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.pos + N;
        let slice = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| DecodeError(format!("truncated at byte {} (need {N})", self.pos)))?;
        self.pos = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take()?))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    fn expect(&mut self, want: u8, what: &str) -> Result<(), DecodeError> {
        let got = self.u8()?;
        if got == want {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "{what}: expected {:?}, got {:?}",
                want as char, got as char
            )))
        }
    }

    /// A NUL-terminated string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| DecodeError(format!("unterminated string at byte {}", self.pos)))?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| DecodeError(format!("string at byte {} is not UTF-8", self.pos)))?
            .to_string();
        self.pos += nul + 1;
        Ok(s)
    }

    fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError(format!(
                "value of {len} bytes at byte {} runs past the end ({} left)",
                self.pos,
                self.remaining()
            )));
        }
        let b = self.data.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(DecodeError(format!("tuple with {n} columns")));
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let d = match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.len()?;
                    Datum::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.len()?;
                    Datum::Binary(self.bytes(len)?)
                }
                other => {
                    return Err(DecodeError(format!(
                        "unknown column kind {:?} at byte {}",
                        other as char,
                        self.pos - 1
                    )))
                }
            };
            out.push(d);
        }
        Ok(out)
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| DecodeError(format!("negative length {n}")))
    }
}

/// Builds `pgoutput` messages: byte fixtures for tests (of this crate and its users).
#[doc(hidden)]
pub mod encode {
    /// A column value to encode.
    pub enum Col<'a> {
        /// NULL
        Null,
        /// Unchanged TOAST
        Unchanged,
        /// Text value
        Text(&'a str),
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, cols: &[Col]) {
        out.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for c in cols {
            match c {
                Col::Null => out.push(b'n'),
                Col::Unchanged => out.push(b'u'),
                Col::Text(t) => {
                    out.push(b't');
                    out.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
    }

    /// `B`egin.
    pub fn begin(final_lsn: u64, commit_time: i64, xid: u32) -> Vec<u8> {
        let mut out = vec![b'B'];
        out.extend_from_slice(&final_lsn.to_be_bytes());
        out.extend_from_slice(&commit_time.to_be_bytes());
        out.extend_from_slice(&xid.to_be_bytes());
        out
    }

    /// `C`ommit.
    pub fn commit(commit_lsn: u64, end_lsn: u64, commit_time: i64) -> Vec<u8> {
        let mut out = vec![b'C', 0];
        out.extend_from_slice(&commit_lsn.to_be_bytes());
        out.extend_from_slice(&end_lsn.to_be_bytes());
        out.extend_from_slice(&commit_time.to_be_bytes());
        out
    }

    /// `R`elation with `(name, type OID)` columns.
    pub fn relation(id: u32, namespace: &str, name: &str, columns: &[(&str, u32)]) -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend_from_slice(&id.to_be_bytes());
        string(&mut out, namespace);
        string(&mut out, name);
        out.push(b'd');
        out.extend_from_slice(&(columns.len() as i16).to_be_bytes());
        for (i, (col, oid)) in columns.iter().enumerate() {
            out.push(u8::from(i == 0));
            string(&mut out, col);
            out.extend_from_slice(&oid.to_be_bytes());
            out.extend_from_slice(&(-1i32).to_be_bytes());
        }
        out
    }

    /// `I`nsert.
    pub fn insert(relation: u32, cols: &[Col]) -> Vec<u8> {
        let mut out = vec![b'I'];
        out.extend_from_slice(&relation.to_be_bytes());
        out.push(b'N');
        tuple(&mut out, cols);
        out
    }

    /// `U`pdate without an old tuple.
    pub fn update(relation: u32, cols: &[Col]) -> Vec<u8> {
        let mut out = vec![b'U'];
        out.extend_from_slice(&relation.to_be_bytes());
        out.push(b'N');
        tuple(&mut out, cols);
        out
    }

    /// `D`elete with a key tuple.
    pub fn delete(relation: u32, key: &[Col]) -> Vec<u8> {
        let mut out = vec![b'D'];
        out.extend_from_slice(&relation.to_be_bytes());
        out.push(b'K');
        tuple(&mut out, key);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{self, Col};
    use super::*;

    fn dec(v: Vec<u8>) -> Result<PgOutput, DecodeError> {
        decode(&Bytes::from(v))
    }

    #[test]
    fn begin_and_commit() {
        assert_eq!(
            dec(encode::begin(0x16B6C50, 42, 7)).unwrap(),
            PgOutput::Begin {
                final_lsn: 0x16B6C50,
                commit_time: 42,
                xid: 7
            }
        );
        assert_eq!(
            dec(encode::commit(10, 20, 30)).unwrap(),
            PgOutput::Commit {
                flags: 0,
                commit_lsn: 10,
                end_lsn: 20,
                commit_time: 30
            }
        );
    }

    /// A Relation message as PostgreSQL 15 sends it for `public.t (id uuid, n int4)`,
    /// byte for byte.
    #[test]
    fn relation_from_literal_bytes() {
        let bytes: Vec<u8> = [
            &b"R"[..],
            &[0, 0, 0x40, 0x01],       // relation id 16385
            b"public\0t\0",            // namespace, name
            b"d",                      // replica identity default
            &[0, 2],                   // 2 columns
            &[1],                      // key column
            b"id\0",                   //
            &[0, 0, 0x0b, 0x86],       // uuid (2950)
            &[0xff, 0xff, 0xff, 0xff], // typmod -1
            &[0],                      //
            b"n\0",                    //
            &[0, 0, 0, 23],            // int4
            &[0xff, 0xff, 0xff, 0xff], //
        ]
        .concat();
        let PgOutput::Relation(r) = dec(bytes).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(r.id, 16385);
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("public", "t"));
        assert_eq!(r.columns.len(), 2);
        assert_eq!(r.columns[0].name, "id");
        assert_eq!(r.columns[0].type_oid, 2950);
        assert_eq!(r.columns[0].flags, 1);
        assert_eq!(r.columns[1].type_oid, 23);
        assert_eq!(r.columns[1].type_modifier, -1);
    }

    #[test]
    fn insert_with_null_and_text() {
        let m = dec(encode::insert(
            5,
            &[Col::Text("a"), Col::Null, Col::Text("{\"x\": 1}")],
        ))
        .unwrap();
        let PgOutput::Insert { relation, new } = m else {
            panic!("not an insert")
        };
        assert_eq!(relation, 5);
        assert_eq!(new[0].as_str(), Some("a"));
        assert_eq!(new[1], Datum::Null);
        assert_eq!(new[2].as_str(), Some("{\"x\": 1}"));
    }

    #[test]
    fn update_delete_truncate_message() {
        let m = dec(encode::update(5, &[Col::Text("a"), Col::Unchanged])).unwrap();
        assert!(
            matches!(m, PgOutput::Update { relation: 5, old: None, ref new } if new[1] == Datum::Unchanged)
        );
        let m = dec(encode::delete(5, &[Col::Text("k")])).unwrap();
        assert!(matches!(m, PgOutput::Delete { relation: 5, .. }));
        let mut t = vec![b'T', 0, 0, 0, 2, 1];
        t.extend_from_slice(&7u32.to_be_bytes());
        t.extend_from_slice(&8u32.to_be_bytes());
        assert_eq!(
            dec(t).unwrap(),
            PgOutput::Truncate {
                options: 1,
                relations: vec![7, 8]
            }
        );
        let mut msg = vec![b'M', 1];
        msg.extend_from_slice(&99u64.to_be_bytes());
        msg.extend_from_slice(b"hb\0");
        msg.extend_from_slice(&2u32.to_be_bytes());
        msg.extend_from_slice(b"ok");
        assert_eq!(
            dec(msg).unwrap(),
            PgOutput::Message {
                transactional: true,
                lsn: 99,
                prefix: "hb".into(),
                content: Bytes::from_static(b"ok")
            }
        );
    }

    #[test]
    fn update_with_old_key() {
        let mut u = vec![b'U'];
        u.extend_from_slice(&9u32.to_be_bytes());
        u.push(b'K');
        u.extend_from_slice(&[0, 1, b't', 0, 0, 0, 1, b'k']);
        u.push(b'N');
        u.extend_from_slice(&[0, 1, b'n']);
        let PgOutput::Update { old, new, .. } = dec(u).unwrap() else {
            panic!()
        };
        assert_eq!(old.unwrap()[0].as_str(), Some("k"));
        assert_eq!(new, vec![Datum::Null]);
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = encode::insert(5, &[Col::Text("hello"), Col::Null]);
        // Every truncation of a valid message fails cleanly.
        for cut in 0..good.len() {
            assert!(dec(good[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        assert!(dec(vec![b'Z']).is_err());
        // A length running past the end, a negative length, an unknown column kind.
        let mut bad = vec![b'I', 0, 0, 0, 5, b'N', 0, 1, b't'];
        bad.extend_from_slice(&1000i32.to_be_bytes());
        assert!(dec(bad).unwrap_err().0.contains("runs past the end"));
        let mut neg = vec![b'I', 0, 0, 0, 5, b'N', 0, 1, b't'];
        neg.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(dec(neg).unwrap_err().0.contains("negative length"));
        assert!(dec(vec![b'I', 0, 0, 0, 5, b'N', 0, 1, b'x'])
            .unwrap_err()
            .0
            .contains("unknown column kind"));
        assert!(dec(vec![b'I', 0, 0, 0, 5, b'X']).is_err());
        // A huge truncate count does not allocate.
        assert!(dec(vec![b'T', 0xff, 0xff, 0xff, 0xff, 0]).is_err());
        // Unterminated string.
        assert!(dec(vec![b'Y', 0, 0, 0, 1, b'a']).is_err());
    }

    #[test]
    fn values_are_slices_of_the_payload() {
        let data = Bytes::from(encode::insert(1, &[Col::Text("abc")]));
        let PgOutput::Insert { new, .. } = decode(&data).unwrap() else {
            panic!()
        };
        let Datum::Text(b) = &new[0] else { panic!() };
        let start = b.as_ptr() as usize - data.as_ptr() as usize;
        assert_eq!(&data[start..start + 3], b"abc");
    }
}
