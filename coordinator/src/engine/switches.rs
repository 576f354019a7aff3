//! The options that hold for the whole coordinator rather than one session
//! (its background work): whichever session set them last, every session
//! shows and obeys the same value.

use std::sync::atomic::Ordering;

use datafusion::common::{Result, plan_err};
use tessera_sql::size::{format_rate, parse_rate};

use super::Coordinator;
use crate::catalog::Catalog;
use crate::options::TesseraOptions;

/// The coordinator-wide options, without their `tessera.` prefix.
pub(super) const SWITCHES: [&str; 4] = [
    "index_apply",
    "compaction",
    "rebalance_rate",
    "auto_rebalance",
];

/// The value `tessera.<name>` has for the coordinator, if it is one of
/// [`SWITCHES`].
pub(super) fn switch_value(catalog: &Catalog, name: &str) -> Option<String> {
    let paused = |p: &std::sync::atomic::AtomicBool| {
        if p.load(Ordering::SeqCst) {
            "paused"
        } else {
            "running"
        }
        .to_string()
    };
    match name {
        "index_apply" => Some(paused(&catalog.apply_paused)),
        "compaction" => Some(paused(&catalog.compaction_paused)),
        "rebalance_rate" => Some(format_rate(catalog.copy_rate.load(Ordering::SeqCst))),
        "auto_rebalance" => Some(
            if catalog.auto_rebalance.load(Ordering::SeqCst) {
                "on"
            } else {
                "off"
            }
            .to_string(),
        ),
        _ => None,
    }
}

/// Sets the coordinator's `name` to `value`; an unknown value is refused
/// and changes nothing.
fn set_switch(catalog: &Catalog, name: &str, value: &str) -> Result<()> {
    let lower = value.trim().to_ascii_lowercase();
    let (flag, on) = match name {
        "index_apply" | "compaction" => {
            let flag = if name == "index_apply" {
                &catalog.apply_paused
            } else {
                &catalog.compaction_paused
            };
            match lower.as_str() {
                "running" => (flag, false),
                "paused" => (flag, true),
                _ => {
                    return plan_err!(
                        "tessera.{name} is '{value}'; set it to 'running' (the default) or \
                         'paused'"
                    );
                }
            }
        }
        "auto_rebalance" => match lower.as_str() {
            "on" | "true" => (&catalog.auto_rebalance, true),
            "off" | "false" => (&catalog.auto_rebalance, false),
            _ => {
                return plan_err!(
                    "tessera.auto_rebalance is '{value}'; set it to 'on' or 'off' (the default)"
                );
            }
        },
        "rebalance_rate" => {
            let rate = parse_rate(value).map_err(|e| {
                datafusion::common::DataFusionError::Plan(format!(
                    "tessera.rebalance_rate: {}; say, '64MB/s', or 'unlimited'",
                    e.message()
                ))
            })?;
            catalog.copy_rate.store(rate, Ordering::SeqCst);
            return Ok(());
        }
        _ => return Ok(()),
    };
    flag.store(on, Ordering::SeqCst);
    Ok(())
}

impl Coordinator {
    /// Carries out a SET or RESET of one of [`SWITCHES`] (`variable` is the
    /// one the statement named: no other is touched). An unknown value is
    /// refused, and the session shows the coordinator's value again.
    pub(super) fn follow_switch(&self, variable: &str) -> Result<()> {
        let variable = variable.trim_matches('"').to_ascii_lowercase();
        let Some(name) = variable
            .strip_prefix("tessera.")
            .filter(|n| SWITCHES.contains(n))
        else {
            return Ok(());
        };
        let state = self.ctx().state_ref();
        let mut state = state.write();
        let Some(opts) = state
            .config_mut()
            .options_mut()
            .extensions
            .get_mut::<TesseraOptions>()
        else {
            return Ok(());
        };
        let value = match name {
            "index_apply" => &mut opts.index_apply,
            "compaction" => &mut opts.compaction,
            "rebalance_rate" => &mut opts.rebalance_rate,
            _ => &mut opts.auto_rebalance,
        };
        let set = set_switch(&self.catalog, name, value);
        if let Some(now) = switch_value(&self.catalog, name) {
            *value = now;
        }
        set?;
        match name {
            "index_apply" => self.catalog.apply_wanted.notify_one(),
            "auto_rebalance" => self.catalog.rebalance_wanted.notify_one(),
            _ => {}
        }
        Ok(())
    }
}
