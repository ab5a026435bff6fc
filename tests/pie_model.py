"""A reference PIE drop-probability update, written from RFC 8033's pseudocode (section 5,
calculate_drop_prob), in floating point and seconds as the RFC writes it: what the classifier's
fixed-point update (datapath/bpf/aqm.h, moa_pie_update) is held to by
tests/test_classifier_pie.py, update by update.

Choices the RFC leaves to the implementation, as docs/semantics.md ("Queue management") states
them: the queue delay is the backlog the updating packet finds (exact on a timeline); the burst
allowance drops by T_UPDATE at each update and is restored to MAX_BURST when the probability is
0 and both this and the last queue delay are below QDELAY_REF / 2.
"""
from __future__ import annotations

from dataclasses import dataclass

ALPHA = 0.125         # 1/s
BETA = 1.25           # 1/s
MAX_BURST = 0.150     # s


@dataclass
class Pie:
    qdelay_ref: float          # s
    t_update: float            # s
    drop_prob: float = 0.0
    qdelay_old: float = 0.0
    burst_allowance: float = MAX_BURST

    def calculate_drop_prob(self, qdelay: float) -> None:
        p = ALPHA * (qdelay - self.qdelay_ref) + BETA * (qdelay - self.qdelay_old)
        if self.drop_prob < 0.000001:
            p /= 2048
        elif self.drop_prob < 0.00001:
            p /= 512
        elif self.drop_prob < 0.0001:
            p /= 128
        elif self.drop_prob < 0.001:
            p /= 32
        elif self.drop_prob < 0.01:
            p /= 8
        elif self.drop_prob < 0.1:
            p /= 2
        if self.drop_prob >= 0.1 and p > 0.02:
            p = 0.02
        prob = self.drop_prob + p
        # exponentially decay drop prob when congestion goes away
        if qdelay < self.qdelay_ref / 2 and self.qdelay_old < self.qdelay_ref / 2:
            prob *= 0.98
        self.drop_prob = min(max(prob, 0.0), 1.0)
        self.burst_allowance = max(0.0, self.burst_allowance - self.t_update)
        if self.drop_prob == 0 and qdelay < self.qdelay_ref / 2 and \
                self.qdelay_old < self.qdelay_ref / 2:
            self.burst_allowance = MAX_BURST
        self.qdelay_old = qdelay
