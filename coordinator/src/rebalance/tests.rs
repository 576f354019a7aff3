//! The plan: fair shares, drains, and the strategies' splits and merges.

use super::*;
use crate::catalog_state::CatalogState;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use tessera_sql::{PartitionScheme, Placements, Replication, Strategy, TableDef};

fn state(tables: &[(&str, u32, u32)], workers: &[&str]) -> CatalogState {
    let mut s = CatalogState::default();
    let names: Vec<String> = workers.iter().map(|w| w.to_string()).collect();
    for (i, (name, partitions, replicas)) in tables.iter().enumerate() {
        let scheme = PartitionScheme::Hash {
            columns: vec!["k".into()],
            partitions: *partitions,
            cluster_by: vec![],
        };
        let schema = Schema::new(vec![Field::new("k", DataType::Int64, false)]);
        let mut def = TableDef::try_new(name, i as u64, &schema, scheme).unwrap();
        def.replication = Replication::try_new(*replicas, None).unwrap();
        s.tables.insert(name.to_string(), def);
        s.map
            .place_table(name, *partitions, *replicas, &names, 0)
            .unwrap();
        let stats = s.stats.entry(name.to_string()).or_default();
        for p in 0..*partitions {
            stats.entry(p).or_default().bytes = 1000;
        }
    }
    s
}

fn roles(eligible: &[&str], drain: &[&str]) -> BTreeMap<String, Role> {
    let mut r: BTreeMap<String, Role> = eligible
        .iter()
        .map(|w| (w.to_string(), Role::Eligible))
        .collect();
    r.extend(drain.iter().map(|w| (w.to_string(), Role::Drain)));
    r
}

fn apply_steps(s: &mut CatalogState, plan: &Plan) {
    for step in &plan.steps {
        let p = s
            .map
            .tables
            .get_mut(&step.map_key)
            .and_then(|p| p.by_id_mut(step.partition))
            .unwrap();
        match &step.to {
            Some(to) => replace(p, &step.from, to),
            None => p.replicas.retain(|w| *w != step.from),
        }
    }
}

/// A fourth worker joins three: it takes a fair count of every table's
/// copies, co-located tables move the same partitions, and the bytes
/// moved are the optimum.
#[test]
fn a_joining_worker_takes_a_fair_share() {
    let mut s = state(
        &[("a", 8, 1), ("b", 8, 1), ("c", 6, 2)],
        &["w1", "w2", "w3"],
    );
    let r = roles(&["w1", "w2", "w3", "w4"], &[]);
    let plan = plan(&s, &r, None, &HeldBack::default());
    let moved = |t: &str| -> Vec<u32> {
        plan.steps
            .iter()
            .filter(|x| x.table == t)
            .map(|x| x.partition)
            .collect()
    };
    assert_eq!(moved("a"), moved("b"), "co-located tables move together");
    assert!(plan.steps.iter().all(|x| x.to.as_deref() == Some("w4")));
    assert!(
        plan.after.partitions <= 1.25 && plan.after.bytes <= 1.25,
        "{plan:?}"
    );
    assert!(
        plan.moved_bytes() as f64 <= plan.optimum_bytes as f64 * 1.15,
        "{plan:?}"
    );
    apply_steps(&mut s, &plan);
    for placements in s.map.tables.values() {
        for p in placements {
            let mut r = p.replicas.clone();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), p.replicas.len(), "two copies on one worker: {p:?}");
        }
    }
    // Planned again: nothing left to do.
    assert!(
        super::plan(&s, &r, None, &HeldBack::default())
            .steps
            .is_empty()
    );
}

/// REBALANCE DYNAMIC: a partition past the split size splits into the
/// next two ids, neighbours both under the merge size merge (not below
/// one partition per worker), and the halves then even out.
#[test]
fn dynamic_splits_big_and_merges_small() {
    let mut s = state(&[("a", 6, 1)], &["w1", "w2", "w3"]);
    s.tables.get_mut("a").unwrap().rebalance = Strategy::Dynamic {
        split_bytes: 5000,
        merge_bytes: 500,
    };
    let sizes = [9000, 100, 100, 100, 100, 1000];
    for (p, b) in sizes.iter().enumerate() {
        s.stats
            .get_mut("a")
            .unwrap()
            .get_mut(&(p as u32))
            .unwrap()
            .bytes = *b;
    }
    let r = roles(&["w1", "w2", "w3"], &[]);
    let plan = plan(&s, &r, None, &HeldBack::default());
    let shape: Vec<(Operation, u32, Option<u32>, Vec<u32>)> = plan
        .steps
        .iter()
        .filter(|x| x.operation != Operation::Move)
        .map(|x| (x.operation, x.partition, x.with, x.makes.clone()))
        .collect();
    assert_eq!(
        shape,
        [
            (Operation::Split, 0, None, vec![6, 7]),
            (Operation::Merge, 1, Some(2), vec![8]),
            (Operation::Merge, 3, Some(4), vec![9]),
        ]
    );
    assert_eq!(plan.steps[0].bytes, 9000);
    // 1 and 2 (and 3 and 4) sit on different workers: the upper one's
    // bytes cross.
    assert_eq!(plan.steps[1].crossing, 100);
    assert!(plan.after.partitions <= 1.5, "{plan:?}");
    // A partition held back (its split failed at 9000 bytes) is left
    // whole until it has doubled.
    let held = HeldBack::default();
    let id = s.tables["a"].id;
    held.until_grown(id, 0, 9000);
    let splits = |s: &CatalogState| {
        super::plan(s, &r, None, &held)
            .steps
            .iter()
            .filter(|x| x.operation == Operation::Split)
            .count()
    };
    assert_eq!(splits(&s), 0);
    let mut grown = s.clone();
    grown.stats.get_mut("a").unwrap().get_mut(&0).unwrap().bytes = 18_000;
    assert_eq!(splits(&grown), 1);
    // A worker merely down counts (the table is kept on it: no merge
    // below three partitions), and what it holds stays as it is (2
    // and 5 here).
    let mut one_down = roles(&["w1", "w2"], &[]);
    one_down.insert("w3".into(), Role::Down);
    let changes: Vec<(Operation, u32)> = super::plan(&s, &one_down, None, &HeldBack::default())
        .steps
        .iter()
        .filter(|x| x.operation != Operation::Move)
        .map(|x| (x.operation, x.partition))
        .collect();
    assert_eq!(changes, [(Operation::Split, 0), (Operation::Merge, 3)]);
    // Empty partitions do not merge below one per worker.
    let mut empty = state(&[("e", 4, 1)], &["w1", "w2", "w3"]);
    empty.tables.get_mut("e").unwrap().rebalance = Strategy::Dynamic {
        split_bytes: 5000,
        merge_bytes: 2000,
    };
    let merges = super::plan(&empty, &r, None, &HeldBack::default())
        .steps
        .iter()
        .filter(|x| x.operation == Operation::Merge)
        .count();
    assert_eq!(merges, 1, "4 partitions on 3 workers merge once");
    // A GLOBAL index holds the table's partitions as they are.
    let mut indexed = s.clone();
    let index = tessera_sql::IndexDef::try_new(
        "g",
        &s.tables["a"],
        9,
        vec!["k".into()],
        tessera_sql::IndexKind::GlobalSync,
        Some(2),
    )
    .unwrap();
    indexed.indexes.insert("g".into(), index);
    assert!(
        super::plan(&indexed, &r, None, &HeldBack::default())
            .steps
            .iter()
            .all(|x| x.operation == Operation::Move)
    );
}

/// REBALANCE PROPORTIONAL: a joining worker makes the table split its
/// largest partitions until it has n per worker, and it takes halves;
/// workers leaving make neighbours merge.
#[test]
fn proportional_keeps_n_per_worker() {
    let mut s = state(&[("p", 6, 1)], &["w1", "w2", "w3"]);
    s.tables.get_mut("p").unwrap().rebalance = Strategy::Proportional { per_worker: 2 };
    let r = roles(&["w1", "w2", "w3", "w4"], &[]);
    let plan = plan(&s, &r, None, &HeldBack::default());
    let splits: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|x| x.operation == Operation::Split)
        .collect();
    assert_eq!(splits.len(), 2, "{plan:?}");
    assert_eq!(splits[0].makes, [6, 7]);
    assert_eq!(splits[1].makes, [8, 9]);
    let moved: Vec<u32> = plan
        .steps
        .iter()
        .filter(|x| x.operation == Operation::Move)
        .map(|x| x.partition)
        .collect();
    assert_eq!(moved.len(), 2, "{plan:?}");
    assert!(moved.iter().all(|p| *p >= 6), "w4 takes halves: {moved:?}");
    assert!(plan.after.partitions <= 1.0 + 1e-9, "{plan:?}");
    // Halves are half the size of the partitions left whole: with only
    // two partitions per worker the bytes even out coarsely.
    assert!(plan.after.bytes <= 1.5, "{plan:?}");
    // Down to two workers: 4 partitions, so two merges.
    let r = roles(&["w1", "w2"], &["w3"]);
    let merges = super::plan(&s, &r, None, &HeldBack::default())
        .steps
        .iter()
        .filter(|x| x.operation == Operation::Merge)
        .count();
    assert_eq!(merges, 2);
}

/// A draining worker ends with nothing; a down one moves nothing.
#[test]
fn draining_empties_a_worker() {
    let mut s = state(&[("a", 8, 2)], &["w1", "w2", "w3", "w4"]);
    let r = roles(&["w1", "w2", "w3"], &["w4"]);
    let plan = plan(&s, &r, None, &HeldBack::default());
    assert!(plan.steps.iter().all(|x| x.from == "w4"));
    apply_steps(&mut s, &plan);
    assert!(
        s.map.tables["a"]
            .iter()
            .all(|p| !p.replicas.contains(&"w4".to_string()))
    );
    let mut down = roles(&["w1", "w2", "w3"], &[]);
    down.insert("w4".into(), Role::Down);
    let s = state(&[("a", 8, 2)], &["w1", "w2", "w3", "w4"]);
    assert!(
        super::plan(&s, &down, None, &HeldBack::default())
            .steps
            .is_empty()
    );
}
