//! Partition key values and their canonical byte encoding.
//!
//! The encoding is part of the on-disk contract: the stable partitioner hashes
//! these bytes, so they must never change. Each value is a one-byte tag then
//! a fixed payload:
//!
//! | tag  | value                                  | payload                      |
//! |------|----------------------------------------|------------------------------|
//! | 0x00 | NULL (of any type)                     | none                         |
//! | 0x01 | signed integers, dates, timestamps     | i64, little endian (8 bytes) |
//! | 0x02 | unsigned integers                      | u64, little endian (8 bytes) |
//! | 0x03 | strings (UTF-8)                        | u32 LE byte length, bytes    |
//! | 0x04 | booleans                               | 1 byte, 0 or 1               |
//! | 0x05 | floats (index terms only)              | f64 bits, little endian      |
//!
//! Every value is first cast to its column's declared type, so `42` and
//! `42::INT` hash alike on a `BIGINT` key. Dates are days since the epoch and
//! timestamps are counted in their column's unit. A compound key is the
//! concatenation of its values' encodings.
//!
//! Floats (indexed columns only: they cannot partition a table) are widened
//! to f64 and made canonical first: `-0.0` is `0.0` and every NaN is one NaN,
//! so values that compare equal encode alike.
//!
//! A NULL key is a value like any other for placement: hash tables put it
//! where the hash of its encoding says, range tables in the first
//! partition (NULL sorts below every value, as `NULLS FIRST`).

use std::cmp::Ordering;
use std::fmt;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use serde::{Deserialize, Serialize};

/// One value of a partition key, in the form the partitioner works with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyValue {
    /// SQL NULL: placed like a value, below every other in a range.
    Null,
    Int(i64),
    UInt(u64),
    Str(String),
    Bool(bool),
    /// A float's canonical f64 bits (see the module docs).
    Float(u64),
}

impl KeyValue {
    /// A float as its canonical value.
    pub fn float(f: f64) -> Self {
        KeyValue::Float(canonical_bits(f))
    }

    /// Appends the canonical encoding (see the module docs) to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            KeyValue::Null => encode_null(buf),
            KeyValue::Int(v) => encode_i64(*v, buf),
            KeyValue::UInt(v) => encode_u64(*v, buf),
            KeyValue::Str(s) => encode_str(s, buf),
            KeyValue::Bool(b) => encode_bool(*b, buf),
            KeyValue::Float(bits) => encode_float_bits(*bits, buf),
        }
    }

    /// Converts a literal of any type to the key value of a column of type
    /// `column_type`, casting first. `Ok(None)` for SQL NULL.
    pub fn from_scalar(value: &ScalarValue, column_type: &DataType) -> Result<Option<KeyValue>> {
        let value = if value.data_type() == *column_type {
            value.clone()
        } else {
            value.cast_to(column_type)?
        };
        if value.is_null() {
            return Ok(None);
        }
        let key = match value {
            ScalarValue::Int8(Some(v)) => KeyValue::Int(v.into()),
            ScalarValue::Int16(Some(v)) => KeyValue::Int(v.into()),
            ScalarValue::Int32(Some(v)) => KeyValue::Int(v.into()),
            ScalarValue::Int64(Some(v)) => KeyValue::Int(v),
            ScalarValue::UInt8(Some(v)) => KeyValue::UInt(v.into()),
            ScalarValue::UInt16(Some(v)) => KeyValue::UInt(v.into()),
            ScalarValue::UInt32(Some(v)) => KeyValue::UInt(v.into()),
            ScalarValue::UInt64(Some(v)) => KeyValue::UInt(v),
            ScalarValue::Date32(Some(v)) => KeyValue::Int(v.into()),
            ScalarValue::Date64(Some(v)) => KeyValue::Int(v),
            ScalarValue::TimestampSecond(Some(v), _)
            | ScalarValue::TimestampMillisecond(Some(v), _)
            | ScalarValue::TimestampMicrosecond(Some(v), _)
            | ScalarValue::TimestampNanosecond(Some(v), _) => KeyValue::Int(v),
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => KeyValue::Str(s),
            ScalarValue::Boolean(Some(b)) => KeyValue::Bool(b),
            ScalarValue::Float32(Some(f)) => KeyValue::float(f.into()),
            ScalarValue::Float64(Some(f)) => KeyValue::float(f),
            other => return plan_err!("{} cannot be a partition key value", other.data_type()),
        };
        Ok(Some(key))
    }

    /// The value as a literal of the column type, for display.
    pub fn to_scalar(&self, column_type: &DataType) -> ScalarValue {
        let raw = match self {
            KeyValue::Null => {
                return ScalarValue::try_from(column_type).unwrap_or(ScalarValue::Null);
            }
            KeyValue::Int(v) => ScalarValue::Int64(Some(*v)),
            KeyValue::UInt(v) => ScalarValue::UInt64(Some(*v)),
            KeyValue::Str(s) => ScalarValue::Utf8(Some(s.clone())),
            KeyValue::Bool(b) => ScalarValue::Boolean(Some(*b)),
            KeyValue::Float(bits) => ScalarValue::Float64(Some(f64::from_bits(*bits))),
        };
        match (self, column_type) {
            (KeyValue::Int(v), DataType::Date32) => ScalarValue::Date32(i32::try_from(*v).ok()),
            (KeyValue::Int(v), DataType::Date64) => ScalarValue::Date64(Some(*v)),
            (KeyValue::Int(v), DataType::Timestamp(unit, tz)) => match unit {
                TimeUnit::Second => ScalarValue::TimestampSecond(Some(*v), tz.clone()),
                TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(*v), tz.clone()),
                TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(*v), tz.clone()),
                TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(*v), tz.clone()),
            },
            _ => raw.cast_to(column_type).unwrap_or(raw),
        }
    }

    /// Reads row `row` of `array`. `Ok(None)` for NULL.
    pub fn from_array(array: &ArrayRef, row: usize) -> Result<Option<KeyValue>> {
        if array.is_null(row) {
            return Ok(None);
        }
        let key = match array.data_type() {
            DataType::Int8 => KeyValue::Int(array.as_primitive::<Int8Type>().value(row).into()),
            DataType::Int16 => KeyValue::Int(array.as_primitive::<Int16Type>().value(row).into()),
            DataType::Int32 => KeyValue::Int(array.as_primitive::<Int32Type>().value(row).into()),
            DataType::Int64 => KeyValue::Int(array.as_primitive::<Int64Type>().value(row)),
            DataType::UInt8 => KeyValue::UInt(array.as_primitive::<UInt8Type>().value(row).into()),
            DataType::UInt16 => {
                KeyValue::UInt(array.as_primitive::<UInt16Type>().value(row).into())
            }
            DataType::UInt32 => {
                KeyValue::UInt(array.as_primitive::<UInt32Type>().value(row).into())
            }
            DataType::UInt64 => KeyValue::UInt(array.as_primitive::<UInt64Type>().value(row)),
            DataType::Date32 => KeyValue::Int(array.as_primitive::<Date32Type>().value(row).into()),
            DataType::Date64 => KeyValue::Int(array.as_primitive::<Date64Type>().value(row)),
            DataType::Timestamp(TimeUnit::Second, _) => {
                KeyValue::Int(array.as_primitive::<TimestampSecondType>().value(row))
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                KeyValue::Int(array.as_primitive::<TimestampMillisecondType>().value(row))
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                KeyValue::Int(array.as_primitive::<TimestampMicrosecondType>().value(row))
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                KeyValue::Int(array.as_primitive::<TimestampNanosecondType>().value(row))
            }
            DataType::Utf8 => KeyValue::Str(array.as_string::<i32>().value(row).to_string()),
            DataType::LargeUtf8 => KeyValue::Str(array.as_string::<i64>().value(row).to_string()),
            DataType::Utf8View => KeyValue::Str(array.as_string_view().value(row).to_string()),
            DataType::Boolean => KeyValue::Bool(array.as_boolean().value(row)),
            DataType::Float32 => {
                KeyValue::float(array.as_primitive::<Float32Type>().value(row).into())
            }
            DataType::Float64 => KeyValue::float(array.as_primitive::<Float64Type>().value(row)),
            other => return exec_err!("{other} cannot be a partition key"),
        };
        Ok(Some(key))
    }
}

impl PartialOrd for KeyValue {
    /// Values of one key column are always of one variant; across variants
    /// there is no order.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (KeyValue::Null, KeyValue::Null) => Some(Ordering::Equal),
            (KeyValue::Null, _) => Some(Ordering::Less),
            (_, KeyValue::Null) => Some(Ordering::Greater),
            (KeyValue::Int(a), KeyValue::Int(b)) => a.partial_cmp(b),
            (KeyValue::UInt(a), KeyValue::UInt(b)) => a.partial_cmp(b),
            (KeyValue::Str(a), KeyValue::Str(b)) => a.partial_cmp(b),
            (KeyValue::Bool(a), KeyValue::Bool(b)) => a.partial_cmp(b),
            (KeyValue::Float(a), KeyValue::Float(b)) => {
                Some(f64::from_bits(*a).total_cmp(&f64::from_bits(*b)))
            }
            _ => None,
        }
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Null => write!(f, "NULL"),
            KeyValue::Int(v) => write!(f, "{v}"),
            KeyValue::UInt(v) => write!(f, "{v}"),
            KeyValue::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            KeyValue::Bool(b) => write!(f, "{b}"),
            KeyValue::Float(bits) => write!(f, "{}", f64::from_bits(*bits)),
        }
    }
}

/// Whether a column of this type can be indexed: a key type or a float.
pub fn is_index_type(data_type: &DataType) -> bool {
    is_key_type(data_type) || matches!(data_type, DataType::Float32 | DataType::Float64)
}

/// Whether a column of this type can be (part of) a partition key.
pub fn is_key_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Boolean
    )
}

/// Appends the canonical encoding of row `row` of `array` without building a
/// [`KeyValue`]: the hot path of write routing.
pub fn encode_array_value(array: &dyn Array, row: usize, buf: &mut Vec<u8>) -> Result<()> {
    if array.is_null(row) {
        encode_null(buf);
        return Ok(());
    }
    match array.data_type() {
        DataType::Int8 => encode_i64(array.as_primitive::<Int8Type>().value(row).into(), buf),
        DataType::Int16 => encode_i64(array.as_primitive::<Int16Type>().value(row).into(), buf),
        DataType::Int32 => encode_i64(array.as_primitive::<Int32Type>().value(row).into(), buf),
        DataType::Int64 => encode_i64(array.as_primitive::<Int64Type>().value(row), buf),
        DataType::UInt8 => encode_u64(array.as_primitive::<UInt8Type>().value(row).into(), buf),
        DataType::UInt16 => encode_u64(array.as_primitive::<UInt16Type>().value(row).into(), buf),
        DataType::UInt32 => encode_u64(array.as_primitive::<UInt32Type>().value(row).into(), buf),
        DataType::UInt64 => encode_u64(array.as_primitive::<UInt64Type>().value(row), buf),
        DataType::Date32 => encode_i64(array.as_primitive::<Date32Type>().value(row).into(), buf),
        DataType::Date64 => encode_i64(array.as_primitive::<Date64Type>().value(row), buf),
        DataType::Timestamp(TimeUnit::Second, _) => {
            encode_i64(array.as_primitive::<TimestampSecondType>().value(row), buf)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => encode_i64(
            array.as_primitive::<TimestampMillisecondType>().value(row),
            buf,
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => encode_i64(
            array.as_primitive::<TimestampMicrosecondType>().value(row),
            buf,
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => encode_i64(
            array.as_primitive::<TimestampNanosecondType>().value(row),
            buf,
        ),
        DataType::Utf8 => encode_str(array.as_string::<i32>().value(row), buf),
        DataType::LargeUtf8 => encode_str(array.as_string::<i64>().value(row), buf),
        DataType::Utf8View => encode_str(array.as_string_view().value(row), buf),
        DataType::Boolean => encode_bool(array.as_boolean().value(row), buf),
        DataType::Float32 => encode_float_bits(
            canonical_bits(array.as_primitive::<Float32Type>().value(row).into()),
            buf,
        ),
        DataType::Float64 => encode_float_bits(
            canonical_bits(array.as_primitive::<Float64Type>().value(row)),
            buf,
        ),
        other => return exec_err!("{other} cannot be a partition key"),
    }
    Ok(())
}

fn encode_null(buf: &mut Vec<u8>) {
    buf.push(0x00);
}

fn encode_i64(v: i64, buf: &mut Vec<u8>) {
    buf.push(0x01);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn encode_u64(v: u64, buf: &mut Vec<u8>) {
    buf.push(0x02);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn encode_str(s: &str, buf: &mut Vec<u8>) {
    buf.push(0x03);
    // Keys longer than 4 GiB cannot reach here: Arrow's i32 offsets stop at 2 GiB
    // and a LargeUtf8 key that size is refused by the writer long before.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// The bits of `f` with `-0.0` made `0.0` and every NaN one NaN.
fn canonical_bits(f: f64) -> u64 {
    if f == 0.0 {
        0.0f64.to_bits()
    } else if f.is_nan() {
        f64::NAN.to_bits()
    } else {
        f.to_bits()
    }
}

fn encode_float_bits(bits: u64, buf: &mut Vec<u8>) {
    buf.push(0x05);
    buf.extend_from_slice(&bits.to_le_bytes());
}

fn encode_bool(b: bool, buf: &mut Vec<u8>) {
    buf.push(0x04);
    buf.push(u8::from(b));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float32Array, Float64Array};

    use super::*;

    fn bytes(v: &KeyValue) -> Vec<u8> {
        let mut buf = vec![];
        v.encode(&mut buf);
        buf
    }

    #[test]
    fn floats_are_canonical() {
        assert_eq!(KeyValue::float(-0.0), KeyValue::float(0.0));
        let other_nan = f64::from_bits(f64::NAN.to_bits() ^ 1);
        assert!(other_nan.is_nan());
        assert_eq!(KeyValue::float(other_nan), KeyValue::float(f64::NAN));
        assert_ne!(KeyValue::float(1.0), KeyValue::float(-1.0));
        // A FLOAT column and a DOUBLE literal of the same value agree, and
        // the write path's encoding is the value's.
        let f32s: ArrayRef = Arc::new(Float32Array::from(vec![1.5f32, -0.0]));
        let f64s: ArrayRef = Arc::new(Float64Array::from(vec![1.5f64, 0.0]));
        for row in 0..2 {
            let (mut a, mut b) = (vec![], vec![]);
            encode_array_value(f32s.as_ref(), row, &mut a).unwrap();
            encode_array_value(f64s.as_ref(), row, &mut b).unwrap();
            assert_eq!(a, b);
            let v = KeyValue::from_array(&f64s, row).unwrap().unwrap();
            assert_eq!(bytes(&v), b);
        }
        let lit = KeyValue::from_scalar(&ScalarValue::Int64(Some(2)), &DataType::Float64).unwrap();
        assert_eq!(lit, Some(KeyValue::float(2.0)));
        assert!(KeyValue::float(-1.0) < KeyValue::float(0.5));
        assert!(is_index_type(&DataType::Float32) && !is_key_type(&DataType::Float64));
    }
}
