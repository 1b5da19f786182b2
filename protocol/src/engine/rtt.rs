//! Round-trip estimate and retransmission timeout (RFC 6298).

use std::time::Duration;

use super::StreamConfig;

#[derive(Debug, Clone)]
pub(super) struct Rtt {
    pub(super) srtt: Option<Duration>,
    rttvar: Duration,
    pub(super) rto: Duration,
}

impl Rtt {
    pub(super) fn new(initial: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            rto: initial,
        }
    }

    pub(super) fn sample(&mut self, r: Duration, cfg: &StreamConfig) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto = (srtt + (self.rttvar * 4).max(Duration::from_millis(10)))
            .clamp(cfg.min_rto, cfg.max_rto);
    }
}
