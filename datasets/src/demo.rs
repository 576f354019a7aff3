//! The demo schema of `tessera serve --demo`: one table per partitioning
//! scheme, with skewed, repeatable data (a fixed-seed generator).
//!
//! | table          | scheme                                           | rows    |
//! |----------------|--------------------------------------------------|---------|
//! | demo_events    | HASH (user_id) PARTITIONS 8                      | 200,000 |
//! | demo_readings  | HASH (sensor) PARTITIONS 8 CLUSTER BY (ts)       | 100,000 |
//! | demo_orders    | RANGE (order_date) SPLIT AT (quarters of 2024)   | 100,000 |

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

/// A demo table: its DDL and its rows.
pub struct DemoTable {
    pub name: &'static str,
    pub ddl: &'static str,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// SplitMix64: small, fast and the same everywhere, so the demo data is
/// too (and seeded tests can be repeated).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Skewed pick in `0..n`: low values are much more likely (hot keys).
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b).min(self.below(n))
    }
}

const BATCH: usize = 50_000;
/// 2024-01-01 as days since the epoch.
const DAY_2024: i32 = 19723;
const MICROS_PER_DAY: i64 = 86_400_000_000;

fn batches(
    schema: &SchemaRef,
    rows: usize,
    mut make: impl FnMut(usize, usize) -> Vec<ArrayRef>,
) -> Result<Vec<RecordBatch>, ArrowError> {
    (0..rows)
        .step_by(BATCH)
        .map(|start| {
            let len = BATCH.min(rows - start);
            RecordBatch::try_new(Arc::clone(schema), make(start, len))
        })
        .collect()
}

fn events(rows: usize) -> Result<DemoTable, ArrowError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ]));
    let kinds = ["view", "click", "cart", "purchase", "refund"];
    let mut rng = Rng(1);
    let batches = batches(&schema, rows, |start, len| {
        let mut user = Vec::with_capacity(len);
        let mut event = Vec::with_capacity(len);
        let mut amount = Vec::with_capacity(len);
        let mut ts = Vec::with_capacity(len);
        for i in start..start + len {
            user.push(rng.skewed(10_000) as i64);
            let k = kinds[rng.skewed(kinds.len() as u64) as usize];
            event.push(k);
            amount.push(
                (k == "purchase" || k == "refund").then(|| (rng.below(100_000) as f64) / 100.0),
            );
            ts.push(i64::from(DAY_2024) * MICROS_PER_DAY + (i as i64) * 60_000_000);
        }
        vec![
            Arc::new(Int64Array::from(user)),
            Arc::new(StringArray::from(event)),
            Arc::new(Float64Array::from(amount)),
            Arc::new(TimestampMicrosecondArray::from(ts)),
        ]
    })?;
    Ok(DemoTable {
        name: "demo_events",
        ddl: "CREATE TABLE demo_events (user_id BIGINT NOT NULL, event VARCHAR NOT NULL, amount DOUBLE, ts TIMESTAMP NOT NULL) \
              PARTITION BY HASH (user_id) PARTITIONS 8",
        schema,
        batches,
    })
}

fn readings(rows: usize) -> Result<DemoTable, ArrowError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("sensor", DataType::Int32, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("value", DataType::Float64, false),
    ]));
    let mut rng = Rng(2);
    let batches = batches(&schema, rows, |start, len| {
        let mut sensor = Vec::with_capacity(len);
        let mut ts = Vec::with_capacity(len);
        let mut value = Vec::with_capacity(len);
        for i in start..start + len {
            let s = (i % 100) as i32;
            sensor.push(s);
            ts.push(i64::from(DAY_2024) * MICROS_PER_DAY + (i as i64 / 100) * 1_000_000);
            value.push(20.0 + f64::from(s) / 10.0 + (rng.below(1000) as f64) / 100.0);
        }
        vec![
            Arc::new(Int32Array::from(sensor)),
            Arc::new(TimestampMicrosecondArray::from(ts)),
            Arc::new(Float64Array::from(value)),
        ]
    })?;
    Ok(DemoTable {
        name: "demo_readings",
        ddl: "CREATE TABLE demo_readings (sensor INT NOT NULL, ts TIMESTAMP NOT NULL, value DOUBLE NOT NULL) \
              PARTITION BY HASH (sensor) PARTITIONS 8 CLUSTER BY (ts)",
        schema,
        batches,
    })
}

fn orders(rows: usize) -> Result<DemoTable, ArrowError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("order_date", DataType::Date32, false),
        Field::new("customer", DataType::Utf8, false),
        Field::new("total", DataType::Float64, false),
    ]));
    let mut rng = Rng(3);
    let batches = batches(&schema, rows, |start, len| {
        let mut id = Vec::with_capacity(len);
        let mut date = Vec::with_capacity(len);
        let mut customer = Vec::with_capacity(len);
        let mut total = Vec::with_capacity(len);
        for i in start..start + len {
            id.push(i as i64);
            date.push(DAY_2024 + rng.below(366) as i32);
            customer.push(format!("customer-{:05}", rng.skewed(5_000)));
            total.push((rng.below(50_000) as f64) / 100.0 + 1.0);
        }
        vec![
            Arc::new(Int64Array::from(id)),
            Arc::new(Date32Array::from(date)),
            Arc::new(StringArray::from(customer)),
            Arc::new(Float64Array::from(total)),
        ]
    })?;
    Ok(DemoTable {
        name: "demo_orders",
        ddl: "CREATE TABLE demo_orders (order_id BIGINT NOT NULL, order_date DATE NOT NULL, customer VARCHAR NOT NULL, total DOUBLE NOT NULL) \
              PARTITION BY RANGE (order_date) SPLIT AT ('2024-04-01', '2024-07-01', '2024-10-01')",
        schema,
        batches,
    })
}

/// The demo tables with their rows.
pub fn demo_tables() -> Result<Vec<DemoTable>, ArrowError> {
    Ok(vec![events(200_000)?, readings(100_000)?, orders(100_000)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_repeatable() {
        let a = demo_tables().unwrap();
        let b = demo_tables().unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.batches, y.batches);
        }
        assert_eq!(
            a[0].batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            200_000
        );
    }
}
