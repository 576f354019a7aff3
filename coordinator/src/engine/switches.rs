//! The options that hold for the whole coordinator rather than one session
//! (its background work): whichever session set them last, every session
//! shows and obeys the same value.

use datafusion::common::{Result, plan_err};
use tessera_sql::size::{format_rate, parse_rate};

use super::Coordinator;
use crate::options::TesseraOptions;

/// The coordinator-wide options, without their `tessera.` prefix.
pub(super) const SWITCHES: [&str; 4] = [
    "index_apply",
    "compaction",
    "rebalance_rate",
    "auto_rebalance",
];

impl Coordinator {
    /// The value `tessera.<name>` has for the coordinator, if it is one of
    /// [`SWITCHES`].
    pub(super) fn switch_value(&self, name: &str) -> Option<String> {
        let paused = |p: bool| if p { "paused" } else { "running" }.to_string();
        match name {
            "index_apply" => Some(paused(self.applier().paused())),
            "compaction" => Some(paused(self.compactor.paused())),
            "rebalance_rate" => Some(format_rate(self.rebalancer.copy_rate.get())),
            "auto_rebalance" => Some(if self.rebalancer.auto() { "on" } else { "off" }.to_string()),
            _ => None,
        }
    }

    /// Sets the coordinator's `name` to `value`; an unknown value is refused
    /// and changes nothing.
    fn set_switch(&self, name: &str, value: &str) -> Result<()> {
        let lower = value.trim().to_ascii_lowercase();
        match name {
            "index_apply" | "compaction" => {
                let paused = match lower.as_str() {
                    "running" => false,
                    "paused" => true,
                    _ => {
                        return plan_err!(
                            "tessera.{name} is '{value}'; set it to 'running' (the default) or \
                         'paused'"
                        );
                    }
                };
                if name == "index_apply" {
                    self.pause_index_apply(paused);
                } else {
                    self.compactor.set_paused(paused);
                }
            }
            "auto_rebalance" => match lower.as_str() {
                "on" | "true" => self.rebalancer.set_auto(true),
                "off" | "false" => self.rebalancer.set_auto(false),
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
                self.rebalancer.copy_rate.set(rate);
            }
            _ => {}
        }
        Ok(())
    }

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
        let set = self.set_switch(name, value);
        if let Some(now) = self.switch_value(name) {
            *value = now;
        }
        set
    }
}
